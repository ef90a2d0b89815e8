"""Load tests: Locust users per transport (locustfile.py) on a blocking streaming client (streaming.py)."""
