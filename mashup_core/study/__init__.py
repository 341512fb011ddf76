"""The leave-one-out study: its spec and cells, the grid runner, the report, the background job."""
