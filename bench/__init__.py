"""Copeau's benchmark suite (issue #7): `python -m bench` (see bench/README.md).

Not part of the product and not run by `make test`: it starts real mosquitto and influxd in temporary folders,
runs the gateway and the collector as the product runs them (`copeau gateway`, `copeau collector` subprocesses)
and measures throughput, latency, memory and collector capacity. Every figure is a median over several runs, with
min and max; results go to bench/results/*.json.
"""
