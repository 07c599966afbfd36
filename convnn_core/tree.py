"""Framework-neutral pytree helpers for params as nested dicts / lists / tuples of arrays."""
from __future__ import annotations

from typing import Any, Callable, Iterator


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply fn leaf-wise over trees of the same structure (dicts keep their keys, lists and tuples their order)."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, tree[k], *[r[k] for r in rest]) for k in tree}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, t, *[r[i] for r in rest]) for i, t in enumerate(tree))
    if tree is None:
        return None
    return fn(tree, *rest)


def tree_leaves(tree: Any) -> list[Any]:
    """The leaves in a fixed order (dict keys sorted)."""
    return [leaf for _, leaf in tree_items(tree)]


def tree_items(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) pairs, dict keys sorted: the flat names used by checkpoints."""
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from tree_items(tree[k], f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, t in enumerate(tree):
            yield from tree_items(t, f"{prefix}{i}.")
    elif tree is not None:
        yield prefix[:-1], tree


def tree_with_leaves(tree: Any, leaves: Any) -> Any:
    """tree's structure holding `leaves` (in tree_leaves order) in place of its own: the inverse of tree_leaves."""
    source = iter(leaves)

    def take() -> Any:
        leaf = next(source, _END)
        if leaf is _END:
            raise ValueError("leaves: fewer leaves than the tree has")
        return leaf

    def build(node: Any) -> Any:
        if isinstance(node, dict):
            built = {k: build(node[k]) for k in sorted(node)}
            return {k: built[k] for k in node}
        if isinstance(node, (list, tuple)):
            return type(node)(build(t) for t in node)
        if node is None:
            return None
        return take()

    out = build(tree)
    if next(source, _END) is not _END:
        raise ValueError("leaves: more leaves than the tree has")
    return out


_END = object()


def flatten(tree: Any) -> dict[str, Any]:
    """{dotted path: leaf}."""
    return dict(tree_items(tree))


def unflatten(flat: dict[str, Any]) -> Any:
    """Inverse of flatten for dict-only trees (list positions come back as dict keys '0', '1', ...)."""
    root: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = root
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf
    return root


def count_params(tree: Any) -> int:
    """Total number of scalar parameters."""
    total = 0
    for leaf in tree_leaves(tree):
        n = 1
        for d in leaf.shape:
            n *= int(d)
        total += n
    return total
