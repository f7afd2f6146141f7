"""One thin module per resource: parse, call a service, shape the response."""
