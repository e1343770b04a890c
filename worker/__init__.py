"""The RabbitMQ consumer that applies campaign events and emits throttled updates."""
