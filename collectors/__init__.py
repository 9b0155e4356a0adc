"""Collectors: read CNC machines (Modbus TCP today), derive events in a pure core, publish them over MQTT."""
