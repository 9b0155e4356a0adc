"""Grafana dashboards as code (issue #5): five boards in French and English, InfluxQL only, and the tools to
regenerate them (`python -m dashboards`) and push them to a Grafana (`copeau dashboards push`).

- `catalogue`: every word on the boards, French and English;
- `influxql`: the InfluxQL query type that grafana-foundation-sdk lacks;
- `boards`: the five boards and their queries;
- `generate`: the committed JSON and provisioning files, byte for byte;
- `push`: data source and boards to a running Grafana through grafana-client.
"""
