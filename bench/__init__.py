"""Benchmarks: ``python -m bench [name ...] [--out DIR]`` (``make bench``), JSON out.

Figures are medians over repeats, with ratios against a baseline measured in the same run,
so numbers from a noisy machine stay comparable. Nothing here is asserted in tests.

``python -m bench consumers`` (alone; minutes, real servers, npm) runs ``bench.consumers``:
the aggregator beside a Node-RED flow (``bench.nodered``) and a bare Python consumer
(``bench.bare_consumer``) on one Mosquitto and one InfluxDB 1.x.
"""
