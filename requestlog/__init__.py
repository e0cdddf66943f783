"""Durable request log: tables, batched writer, disk spool and replay."""
