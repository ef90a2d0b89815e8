"""The tools beside the server: the proxy lab, the path probe, the comparison, Locust users, benchmarks."""
