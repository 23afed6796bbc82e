"""Execution of compiled programs: memory arenas, JIT engines, kernel launch, caches."""
