"""Accuracy-aware fallback: revert the most harmful quantized nodes to float until the metric holds.

Given a ranking (``sensitivity.rank_by_leave_one_out``), reverting a longer prefix of it should
only improve the metric, so we search the shortest passing prefix: doubling (1, 2, 4, ...) until one
passes, then bisect between the last failing and the first passing length. That costs about
2*log2(N) real builds (``quantize_static(nodes_to_exclude=...)``) instead of N, and is
deterministic: the sequence of builds depends only on the metric values.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pydantic import BaseModel

from ..errors import AccuracyError
from ..metrics import MetricSpec
from .evaluate import measure_latency
from .presets import runtime_level_for


class FallbackResult(BaseModel):
    excluded: List[str]
    model_path: Path
    metric: Dict[str, float]
    builds: int
    """How many quantized models were built and scored (the first, full one included)."""


Build = Callable[[Sequence[str]], Path]
Score = Callable[[Path], Dict[str, float]]


def revert_until_within_tolerance(
    build: Build,
    score: Score,
    metric: MetricSpec,
    ranked: Sequence[str],
    deadline: float,
    first: Optional[Tuple[Path, Dict[str, float]]] = None,
    progress: Optional[Callable[[str], None]] = None,
    accept: Optional[Callable[[Dict[str, float]], bool]] = None,
) -> FallbackResult:
    """Smallest prefix of ``ranked`` whose exclusion makes ``metric`` pass.

    ``build(excluded)`` returns a quantized model; ``score(path)`` returns MetricSpec.score's dict.
    ``first`` is the already scored full quantization (nothing excluded), if the caller has it.
    Raises AccuracyError when even reverting every ranked node misses the threshold, or when the
    time budget runs out first; the message names the metric, the best value and the threshold.
    ``accept(score)`` replaces "the metric passes" as the test (the guard fallback adds its guards).
    """
    results: Dict[int, Tuple[Path, Dict[str, float]]] = {}
    builds = 0

    def check(k: int) -> bool:
        nonlocal builds
        if k not in results:
            if time.monotonic() > deadline:
                raise _budget_error(metric, results)
            if progress:
                progress(f"fallback: {k} node(s) float")
            path = build(list(ranked[:k]))
            results[k] = (path, score(path))
            builds += 1
        return accept(results[k][1]) if accept else metric.passes(results[k][1]["value"])

    if first is not None:
        results[0] = first
    n = len(ranked)
    if check(0):
        return _done(ranked, 0, results, builds)
    hi = shortest_passing_prefix(check, n)  # out of time raises too: stopping early would make bytes depend on speed
    if hi is None:
        best = _best(metric, results)
        raise AccuracyError(
            f"{metric.name} reached at best {best:.4f} with all {n} quantized node(s) reverted to float, "
            f"threshold {metric.threshold}",
            hint="int8 cannot meet this threshold for this model; use --precision fp32 (or fp16), "
                 "or relax the threshold in edgekit.toml",
            metric=metric.name, best=best, threshold=metric.threshold)
    return _done(ranked, hi, results, builds)


def shortest_passing_prefix(passes: Callable[[int], bool], n: int) -> Optional[int]:
    """The smallest k in 1..n with ``passes(k)``, passing being monotone in k (reverting more nodes
    only helps): doubling from 1, then bisection between the longest failing and the shortest
    passing prefix. None when even ``passes(n)`` is false."""
    lo, hi, k = 0, None, 1  # lo: longest prefix known to fail; hi: shortest known to pass
    while k <= n:
        if passes(k):
            hi = k
            break
        lo = k
        if k == n:
            break
        k = min(2 * k, n)
    if hi is None:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _best(metric: MetricSpec, results: Dict[int, Tuple[Path, Dict[str, float]]]) -> float:
    # a screened score (Scorer.screen stopped early) is only a bound: full scores speak first
    values = [r[1]["value"] for r in results.values() if not r[1].get("screened")] or \
        [r[1]["value"] for r in results.values()]
    best = values[0]
    for v in values[1:]:
        if metric.better(v, best):
            best = v
    return best


def _budget_error(metric: MetricSpec, results: Dict[int, Tuple[Path, Dict[str, float]]]) -> AccuracyError:
    best = _best(metric, results) if results else float("nan")
    return AccuracyError(
        f"{metric.name} reached at best {best:.4f} before the quantization time budget ran out, "
        f"threshold {metric.threshold}",
        hint="raise the budget (budget_s), use --precision fp32, or relax the threshold",
        metric=metric.name, best=best, threshold=metric.threshold, budget=True)


def _done(ranked: Sequence[str], k: int, results: Dict[int, Tuple[Path, Dict[str, float]]], builds: int) -> FallbackResult:
    path, value = results[k]
    return FallbackResult(excluded=list(ranked[:k]), model_path=path, metric=value, builds=builds)


# ----------------------------------------------------------------------------------------------
# The search: several ways to pick the float set, the fastest passing one kept (issue 18)
# ----------------------------------------------------------------------------------------------

Timing = Callable[[Dict[str, Path]], Optional[Dict[str, List[float]]]]
"""``timing({label: model})`` -> {label: per-round ms, 'fp32': [...]} interleaved with the FP32
model (plus 'fp32' + ``evaluate.AA_SUFFIX``: FP32 timed twice, the A/A control), or None when this
host cannot time the target (then the fewest float nodes wins)."""

SPEED_MARGIN = 0.05
"""A bigger float set replaces the default pick (fewest float nodes) only when it is faster by more
than this in most interleaved rounds and in the median: noise must not flip the bytes."""


class SearchResult(BaseModel):
    excluded: List[str]
    model_path: Path
    metric: Dict[str, float]
    builds: int
    strategy: str
    record: Dict[str, Any]
    """For the manifest: the noise floor, every strategy's float set size and score, the timings."""
    faster_than_fp32: Optional[bool] = None
    """Measured on a matching host: clearly faster than FP32 (None: not measured)."""


def depthwise_blocks(model: "onnx.ModelProto", names: Sequence[str]) -> List[List[str]]:  # type: ignore[name-defined]  # noqa: F821
    """``names`` (graph order) in blocks: a depthwise Conv (group > 1) with the Conv that consumes
    its output (through Relu/Clip/BatchNormalization), the pointwise half of a separable block;
    every other node alone. Reverting half a block leaves a Q/DQ round trip between the halves."""
    wanted = set(names)
    nodes = {n.name: n for n in model.graph.node}
    consumers: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    partner: Dict[str, str] = {}
    for name in names:
        node = nodes.get(name)
        if node is None or node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group <= 1:
            continue
        out = node.output[0]
        for _ in range(4):  # a few pass-through activations at most
            users = consumers.get(out, [])
            if len(users) != 1:
                break
            user = users[0]
            if user.name in wanted and user.op_type == "Conv":
                partner[name] = user.name
                break
            if user.op_type not in ("Relu", "Clip", "BatchNormalization", "HardSwish", "Sigmoid", "Mul"):
                break
            out = user.output[0]
    blocks: List[List[str]] = []
    taken = set()
    for name in names:
        if name in taken:
            continue
        block = [name] + ([partner[name]] if name in partner and partner[name] not in taken else [])
        taken.update(block)
        blocks.append(block)
    return blocks


def noise_floor(gains: Sequence[float]) -> float:
    """The largest harm any single revert did. Reverting a node to float cannot make the model
    worse in expectation, so a negative gain is rounding noise, and a positive gain of that size
    says nothing either."""
    worst = min([0.0] + [float(g) for g in gains])
    return -worst


def search_float_set(
    build: Build,
    score: Score,
    metric: MetricSpec,
    ranked: Sequence[Tuple[str, float]],
    graph_order: Sequence[str],
    blocks: Sequence[Sequence[str]],
    deadline: float,
    first: Tuple[Path, Dict[str, float]],
    timing: Optional[Timing] = None,
    progress: Optional[Callable[[str], None]] = None,
    ranked_only: bool = False,
    rebuild: Optional[Build] = None,
    rescore: Optional[Score] = None,
) -> SearchResult:
    """Try several float sets; among those that meet ``metric``, keep the fastest on a matching host.

    Strategies, in a fixed order (each prefix search doubles then bisects, as
    ``revert_until_within_tolerance``): the shortest passing prefix of the ranking; only the nodes
    whose own gain beats the noise floor; blocks (depthwise + pointwise) ranked by summed gain;
    graph-order prefixes from the input side and from the output side (``ranked_only``: the first
    two). Without timing a later prefix search only looks below the best size found (one build
    when it cannot beat it), and the passing
    set with the fewest float nodes wins (ties: the better metric, then the order above). Raises
    AccuracyError when no strategy passes, or when the budget runs out (never a partial search).

    ``build`` may be a fast stand-in for the real quantizer (an in-memory revert of the full int8
    graph, ``sensitivity.revert_in_memory``) and ``score`` a screening scorer that stops a hopeless
    candidate early (``Scorer.screen``): then ``rebuild`` makes each passing set for real and
    ``rescore`` scores it in full before anything is timed or chosen, and a set whose real build
    misses is dropped (the record says so).
    """
    say = progress or (lambda _msg: None)
    cache: Dict[frozenset, Tuple[Path, Dict[str, float]]] = {frozenset(): first}
    builds = 0

    def evaluate(excluded: Sequence[str]) -> Tuple[Path, Dict[str, float]]:
        nonlocal builds
        key = frozenset(excluded)
        if key not in cache:
            if time.monotonic() > deadline:
                raise _budget_error(metric, {i: v for i, v in enumerate(cache.values())})
            path = build(list(excluded))
            cache[key] = (path, score(path))
            builds += 1
        return cache[key]

    def passes(excluded: Sequence[str]) -> bool:
        return metric.passes(evaluate(excluded)[1]["value"])

    def shortest_prefix(order: Sequence[str]) -> Optional[List[str]]:
        n = len(order)
        if timing is None and found:
            # Untimed, the fewest float nodes win: only a prefix shorter than the best so far can,
            # and (reverting more only helps) it exists only if the longest such prefix passes.
            n = min(n, min(len(g) for _, g in found) - 1)
            if n <= 0 or not passes(order[:n]):
                return None
        k = shortest_passing_prefix(lambda i: passes(order[:i]), n)
        return None if k is None else list(order[:k])

    gains = dict(ranked)
    floor = noise_floor(list(gains.values()))
    order = [n for n, _ in ranked]
    block_gain = {tuple(b): sum(gains.get(n, 0.0) for n in b) for b in blocks}
    by_block = [n for b in sorted(blocks, key=lambda b: -block_gain[tuple(b)]) for n in b]
    found: List[Tuple[str, List[str]]] = []
    strategies: List[Tuple[str, Callable[[], Optional[List[str]]]]] = [
        ("ranked prefix", lambda: shortest_prefix(order)),
        ("gain above noise", lambda: (sel if sel and passes(sel) else None)),
        ("blocks by gain", lambda: shortest_prefix(by_block)),
        ("input side", lambda: shortest_prefix(list(graph_order))),
        ("output side", lambda: shortest_prefix(list(reversed(graph_order)))),
    ]
    if ranked_only:  # quantizers ranked by real builds (dynamic): every extra build is a full quantization
        strategies = strategies[:2]
    sel = [n for n in order if gains[n] > floor]
    record: Dict[str, Any] = {"noise_floor": round(floor, 6), "strategies": []}
    if passes([]):
        path, value = evaluate([])
        return SearchResult(excluded=[], model_path=path, metric=value, builds=builds, strategy="none needed",
                            record=record)
    for label, run in strategies:
        say(f"fallback: {label}")
        bound = min((len(g) for _, g in found), default=0) if timing is None else 0
        got = run()
        entry: Dict[str, Any] = {"strategy": label, "passed": got is not None}
        if got is None and bound:
            entry["note"] = f"no passing set with fewer than {bound} float nodes"
        if got is not None:
            entry.update(float_nodes=len(got), value=round(evaluate(got)[1]["value"], 6))
            if all(set(got) != set(g) for _, g in found):
                found.append((label, got))
        record["strategies"].append(entry)
    record["builds"] = builds
    if rebuild is not None and found:
        real_builds, kept = 0, []
        for label, got in found:
            path = rebuild(list(got))
            value = (rescore or score)(path)
            real_builds += 1
            for entry in record["strategies"]:  # the record states what the real build scored
                if entry["strategy"] == label and entry.get("value") != round(value["value"], 6):
                    entry.update(in_memory_value=entry.get("value"), value=round(value["value"], 6))
            if metric.passes(value["value"]):
                cache[frozenset(got)] = (path, value)
                kept.append((label, got))
            else:
                record.setdefault("real_build_missed", []).append(
                    {"strategy": label, "float_nodes": len(got), "value": round(value["value"], 6)})
        record["real_builds"] = real_builds
        found = kept
    if len(found) > 1:
        # Every node float is the FP32 model with extra Q/DQ: the FP32 candidate speaks for it, and
        # it must not win the timing against the int8 sets it is meant to be compared with.
        found = [f for f in found if len(f[1]) < len(graph_order)] or found
    if not found:
        every = list(graph_order)
        best = _best(metric, {i: v for i, v in enumerate(cache.values())})
        raise AccuracyError(
            f"{metric.name} reached at best {best:.4f} with up to all {len(every)} quantized node(s) reverted to "
            f"float, threshold {metric.threshold}",
            hint="int8 cannot meet this threshold for this model; use --precision fp32 (or fp16), "
                 "or relax the threshold in edgekit.toml",
            metric=metric.name, best=best, threshold=metric.threshold,
            stand_in_missed=bool(record.get("real_build_missed")))
    # Default pick: fewest float nodes, then the better metric, then strategy order.
    default = min(range(len(found)), key=lambda i: (len(found[i][1]), -_signed(metric, evaluate(found[i][1])[1]["value"]), i))
    pick = default
    faster: Optional[bool] = None
    rounds = timing({lab: evaluate(g)[0] for lab, g in found}) if timing else None
    if rounds:
        from .evaluate import AA_SUFFIX, clearly_faster, p50

        # measured numbers: the build record keeps them, manifest.json does not (see build.py)
        record["p50_ms"] = {lab: round(p50(r), 4) for lab, r in rounds.items()}
        spread = aa_spread(rounds)
        record["aa_noise_floor"] = round(spread, 4) if "fp32" + AA_SUFFIX in rounds else None
        dl = found[default][0]
        best = min(range(len(found)), key=lambda i: p50(rounds[found[i][0]]))
        if best != default and clearly_faster(rounds[found[best][0]], rounds[dl], max(SPEED_MARGIN, spread)):
            pick = best
        faster = clearly_faster(rounds[found[pick][0]], rounds["fp32"], spread)
        record["faster_than_fp32"] = faster
    label, chosen = found[pick]
    record["chosen"] = label
    path, value = evaluate(chosen)
    return SearchResult(excluded=list(chosen), model_path=path, metric=value, builds=builds, strategy=label,
                        record=record, faster_than_fp32=faster)


def aa_spread(rounds: Dict[str, List[float]]) -> float:
    """The A/A control's spread (FP32 against itself): a speed difference within it is noise; 0 when
    the timing brought no control."""
    from .evaluate import AA_SUFFIX, noise_floor as aa_floor

    twin = rounds.get("fp32" + AA_SUFFIX)
    return aa_floor(rounds["fp32"], twin) if twin else 0.0


def faster_than_fp32(timing: Optional[Timing], label: str, model: Path) -> Optional[bool]:
    """One float set timed against FP32 on a matching host: clearly faster beyond the A/A spread
    (None: this host cannot time the target)."""
    from .evaluate import clearly_faster

    rounds = timing({label: model}) if timing else None
    if not rounds:
        return None
    return clearly_faster(rounds[label], rounds["fp32"], aa_spread(rounds))


def _signed(metric: MetricSpec, value: float) -> float:
    return value if metric.higher_is_better else -value


# ----------------------------------------------------------------------------------------------
# The engine's accuracy fallback step (``ctx``: engine._Ctx) and its host timing
# ----------------------------------------------------------------------------------------------

MAX_LOO_GROUPS = 48
"""Leave-one-out costs one session per group; bigger graphs revert consecutive nodes together."""


def accuracy_fallback(ctx: Any, build: Build, scorer: Any, first: Tuple[Path, Dict[str, float]],
                      nodes: List[Tuple[str, str]], rank: Callable[[List[str], int], List[Tuple[str, float]]],
                      level: str, ranked_only: bool = False, fast_build: Optional[Callable[[], Optional[Build]]] = None):
    """Run the accuracy fallback when needed. Returns (path, score, kept_float entries, note, record).

    ``fast_build()``, called once the ranking is done, may return a stand-in for ``build`` that
    makes a float set without the quantizer (an in-memory revert the ranking has checked against
    real builds); the search then builds only the passing sets for real."""
    path, score = first
    if ctx.metric.passes(score["value"]) or not nodes:
        return path, score, [], "", {}
    names = [n for n, _ in nodes]
    ctx.say(f"ranking {len(names)} quantized nodes by harm")
    group = max(1, -(-len(names) // MAX_LOO_GROUPS))
    pairs = rank(names, group)
    gains = dict(pairs)

    fast = fast_build() if fast_build else None
    screen = getattr(scorer, "screen", scorer.score)

    def search(stand_in: Optional[Build]):
        return search_float_set(stand_in or build, screen, ctx.metric, pairs, names, depthwise_blocks(ctx.graph, names),
                                ctx.deadline, first, timing=timer(ctx, level), progress=ctx.say,
                                ranked_only=ranked_only, rebuild=build if stand_in else None, rescore=scorer.score)
    try:
        try:
            fb = search(fast)
        except AccuracyError as exc:
            if not (fast and exc.details.get("stand_in_missed")):
                raise
            # every set that passed in memory missed as a real build: search again with the quantizer
            ctx.say("fallback: the in-memory reverts disagreed with real builds; searching with real builds")
            fast = None
            fb = search(None)
    except AccuracyError as exc:
        if exc.details.get("budget"):
            raise
        return path, score, [], f"unreachable: {exc.message}", {}
    ops = dict(nodes)
    kept = [{"node": n, "op_type": ops[n], "reason": f"accuracy: reverting it cut the output error by {gains.get(n, 0.0):.3g} "
             f"(float set chosen by: {fb.strategy})"} for n in fb.excluded]
    record = dict(fb.record, ranking=getattr(rank, "record", {}),
                  search_builds="in-memory reverts, passing sets rebuilt" if fast else "quantizer",
                  screened=getattr(scorer, "screened", 0))
    if len(fb.excluded) == len(names):
        return fb.model_path, fb.metric, kept, "every quantized node had to be reverted, so this is not an int8 model", record
    if len(fb.excluded) * 2 > len(names):
        # Mostly float with Q/DQ pairs left around a few nodes: whether that pays is measured where
        # the host can time the target (EfficientNet-Lite0, 59 of 60 float: 1.015x; MobileNetV2,
        # 61 of 63: 0.75x). Where it cannot, the count decides, as before.
        if fb.faster_than_fp32 is None:
            return fb.model_path, fb.metric, kept, (
                f"the fallback had to revert {len(fb.excluded)} of {len(names)} quantized nodes, and this host "
                "cannot time the target to show that the int8 left pays for its Q/DQ"), record
        if not fb.faster_than_fp32:
            return fb.model_path, fb.metric, kept, (
                f"the fallback had to revert {len(fb.excluded)} of {len(names)} quantized nodes, and the result "
                "was not faster than FP32 on this host"), record
    return fb.model_path, fb.metric, kept, "", record


def timer(ctx: Any, level: str) -> Optional[Timing]:
    """Int8 float sets timed against FP32, interleaved, beside FP32's A/A control (through
    ``ctx.measure``, so the build record's memo sees it); None where this host cannot time the target."""
    if not ctx.host_ok:
        return None

    def timing(models: Dict[str, Path]) -> Optional[Dict[str, List[float]]]:
        levels = {k: level for k in models}
        levels["fp32"] = runtime_level_for("fp32", ctx.profile)
        return (ctx.measure or measure_latency)({**models, "fp32": ctx.base}, ctx.validation[0], levels,
                                                threads=ctx.profile.intra_op_threads or 2,
                                                deadline=max(ctx.deadline, time.monotonic() + 5), control="fp32")
    return timing
