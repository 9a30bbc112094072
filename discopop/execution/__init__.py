"""Where work runs: executors (local warm workers, Ray), device placement, and the sandboxed worker's entry point."""
