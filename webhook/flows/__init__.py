"""WhatsApp Flows: sending flow messages and serving the flows data endpoint."""
