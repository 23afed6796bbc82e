"""`fn.explain(*args)` / `tt.compiler.explain(fn, *args)`: a compiled program in text.

Guards, value guards, inputs and where they come from, the IR after the
passes, write-backs, the backward program (when outputs carry gradients)
and what the backend made of it. If no cached trace fits the arguments, the
most recent one is shown with the guard that fails; only a function never
traced is called once (with its side effects, as any call) to trace it.
"""
from __future__ import annotations

from .capture import Call
from .guards import first_failure
from .ir import Namer, type_str


def explain_compiled(compiled, args, kwargs) -> str:
    call = Call.of(args, kwargs)
    programs = compiled.programs
    program = next((p for p in programs if first_failure(p.guards, call) is None), None)
    note = ""
    if program is None and programs:
        program = programs[0]
        failed = first_failure(program.guards, call)
        note = (f"(no cached trace fits these arguments; the most recent one, shown here, fails the guard "
                f"`{failed.describe()}`: found {failed.actual(call)})\n")
    elif program is None:
        compiled(*args, **kwargs)
        program = next((p for p in compiled.programs if first_failure(p.guards, call) is None), None)
        note = "(not traced yet: the function ran once to trace it)\n"
    if program is None:
        return f"{compiled.name}: nothing compiled ({compiled.stats()})"
    return note + format_program(compiled, program)


def format_program(compiled, program) -> str:
    g = program.graph
    namer = Namer()
    from .backends import resolve
    backend = getattr(resolve(compiled.options["backend"]), "name", compiled.options["backend"])
    out = [f"== {compiled.name}: compiled program (backend {backend!r}) ==",
           f"traced {len(program.raw.nodes)} nodes -> {len(g.nodes)} after passes; "
           f"compile {program.compile_seconds * 1e3:.1f} ms",
           f"stats: {compiled.stats()}",
           "", "-- guards (checked before a run) --"]
    out += [f"  {guard.describe()}" for guard in program.guards]
    if program.value_guards:
        out += ["", "-- value guards (checked after a run; a failure abandons it, nothing committed) --"]
        out += [f"  {spec.describe()}" for spec, _ in program.value_guards]
    out += ["", "-- inputs (read by reference at each call) --"]
    for v, src in zip(g.inputs, program.sources):
        out.append(f"  {namer(v)}: {type_str(v)}  <- {type(src).__name__[:-6].lower()} {src.describe()}")
    out += ["", "-- IR after passes --", g.text()]
    if g.writebacks:
        out += ["", "-- write-backs (applied after a successful run) --"]
        for dst, new in g.writebacks:
            out.append(f"  {program.sources[g.inputs.index(dst)].describe()} <- {type_str(new)}")
    if program.grad_bindings:
        out.append(f"  .grad rebound for {len(program.grad_bindings)} parameter(s)")
    if program.backward is not None:
        out += ["", "-- backward program (run by the outputs' grad_fn) --", program.backward.graph.text()]
    explain = getattr(program.executable, "explain", None)
    if explain is not None:
        out += ["", "-- backend --", explain()]
    return "\n".join(out)
