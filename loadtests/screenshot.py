"""A picture of the Transports tab from a real run (the README's image).

    python -m loadtests.screenshot docs/transports-tab.png [--seconds 20] [-- LOCUST ARGS...]

Starts a gateway and a Locust web UI on free loopback ports, lets the run go
for `--seconds`, opens the tab in headless Chromium and saves a screenshot.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

from .procs import ROOT, GatewayProcess, free_port, kill_group, spawn, wait_http

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.screenshot")
    parser.add_argument("out")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("locust_args", nargs="*", help="after --: more Locust arguments")
    args = parser.parse_args(argv)
    extra = args.locust_args or ["-u", "24", "-r", "12", "--drop-rate", "0.2", "--max-tokens", "120"]
    web_port = free_port()
    with ExitStack() as stack:
        gw = stack.enter_context(GatewayProcess())
        ui = spawn([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
                    "--host", gw.url, "--autostart", "--web-host", "127.0.0.1",
                    "--web-port", str(web_port), "--loglevel", "WARNING", *extra], cwd=ROOT)
        stack.callback(kill_group, ui)
        wait_http(f"http://127.0.0.1:{web_port}/transports", ui, timeout=30)
        time.sleep(args.seconds)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 640})
            page.goto(f"http://127.0.0.1:{web_port}/?tab=transports")
            page.wait_for_selector("text=load generator", timeout=20_000)
            page.wait_for_timeout(2500)  # one more poll of the stats
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
