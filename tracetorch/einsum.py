"""einsum as primitives: diagonals (strided views), sums, and pairwise batched matmuls,
so it is differentiable and traceable with no rule of its own."""
from __future__ import annotations

import string


def _parse(equation: str, operands):
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"einsum(): {len(terms)} operand subscripts for {len(operands)} operands in '{equation}'")
    free = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in eq]
    # one set of letters for the longest ellipsis; shorter ones take its trailing letters (right-aligned)
    n_ell = max((x.dim() - (len(t) - 3) for t, x in zip(terms, operands) if "..." in t), default=None)
    ell = "".join(free[:n_ell]) if n_ell is not None else None
    parsed = []
    for term, x in zip(terms, operands):
        if "..." in term:
            n = x.dim() - (len(term) - 3)
            term = term.replace("...", ell[len(ell) - n:] if n > 0 else "")
        if len(term) != x.dim():
            raise ValueError(f"einsum(): subscript '{term}' has {len(term)} letters for an operand of "
                             f"{x.dim()} dims")
        parsed.append(term)
    if arrow:
        out = out.replace("...", ell or "")
    else:
        counts = {}
        for t in parsed:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = (ell or "") + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in (ell or "")))
    return parsed, out


def _diagonal(x, term):
    """Collapse repeated letters of one operand ('ii' -> 'i') by a strided view."""
    while len(set(term)) != len(term):
        c = next(ch for ch in term if term.count(ch) > 1)
        i = term.index(c)
        j = term.index(c, i + 1)
        n = x.shape[i]
        if x.shape[j] != n:
            raise ValueError(f"einsum(): repeated subscript '{c}' has sizes {x.shape[i]} and {x.shape[j]}")
        rest = [k for k in range(x.dim()) if k not in (i, j)]
        x = x.permute(*rest, i, j).reshape(*[x.shape[k] for k in rest], n * n)[..., ::n + 1]
        term = "".join(term[k] for k in rest) + c
    return x, term


def _broadcast(xs):
    """Size-1 dims stretch to the size the same letter has in another operand, as in torch.einsum."""
    sizes = {c: s for x, t in xs for c, s in zip(t, x.shape) if s != 1}
    out = []
    for x, t in xs:
        want = tuple(sizes.get(c, 1) if s == 1 else s for c, s in zip(t, x.shape))
        out.append((x.expand(*want) if want != tuple(x.shape) else x, t))
    return out


def _sum_out(x, term, keep):
    dims = [i for i, c in enumerate(term) if c not in keep]
    if dims:
        x = x.sum(dim=dims)
        term = "".join(c for c in term if c in keep)
    return x, term


def _contract(a, ta, b, tb, keep):
    sizes = {c: s for t, x in ((ta, a), (tb, b)) for c, s in zip(t, x.shape)}
    for c in set(ta) & set(tb):
        if a.shape[ta.index(c)] != b.shape[tb.index(c)]:
            raise ValueError(f"einsum(): subscript '{c}' has size {a.shape[ta.index(c)]} in one operand and "
                             f"{b.shape[tb.index(c)]} in another")
    batch = [c for c in ta if c in tb and c in keep]
    contr = [c for c in ta if c in tb and c not in keep]
    a_only = [c for c in ta if c not in tb]
    b_only = [c for c in tb if c not in ta]

    def prod(cs):
        n = 1
        for c in cs:
            n *= sizes[c]
        return n

    A = a.permute(*[ta.index(c) for c in batch + a_only + contr]).reshape(prod(batch), prod(a_only), prod(contr))
    B = b.permute(*[tb.index(c) for c in batch + contr + b_only]).reshape(prod(batch), prod(contr), prod(b_only))
    out = (A @ B).reshape(*[sizes[c] for c in batch + a_only + b_only])
    return out, "".join(batch + a_only + b_only)


def einsum(equation: str, *operands):
    terms, out = _parse(equation, operands)
    xs = []
    for x, t in zip(operands, terms):
        x, t = _diagonal(x, t)
        xs.append((x, t))
    xs = _broadcast(xs)
    for k in range(len(xs)):
        keep = set(out) | {c for j, (_, t) in enumerate(xs) if j != k for c in t}
        xs[k] = _sum_out(*xs[k], keep)
    x, t = xs[0]
    for k in range(1, len(xs)):
        keep = set(out) | {c for _, tt_ in xs[k + 1:] for c in tt_}
        x, t = _contract(x, t, *xs[k], keep)
    x, t = _sum_out(x, t, set(out))
    if t != out:
        x = x.permute(*[t.index(c) for c in out])
    return x
