"""The MQTT subscriber and the write path: contract, validation, batching, bulk insert."""
