"""What the application calls: the workflow tracer, I/O capture and the HTTP edge middlewares."""
