"""The gateway: a durable MQTT subscriber that validates Copeau events and stores them in InfluxDB (v1 HTTP API),
acknowledging each message only once it is stored or dead-lettered, so that nothing is lost on the way.

Modules: `lineprotocol` (pure encoding), `influx` (writes with the retry/split/bisect policy), `deadletter`
(the file of rejected messages), `service` (the MQTT → InfluxDB loop).
"""
