"""fused_text_failsafe: the pipeline through BLS, degrading instead of failing.

The twelve embedders are called concurrently under one per-request deadline. E1 and at
least six other blocks must answer; a block that fails or is late is left out: FuseMoE is
told through its presence mask and fills it (ensemble/fusemoe.py). MISSING says which
blocks were filled. With every embedder healthy the answer equals fused_text's.

Each embedder has a circuit breaker (ensemble/breaker.py, settings in the registry's
FAILSAFE): after repeated failures or missed deadlines it opens and requests skip that
embedder at once instead of waiting the deadline; while it is half-open one request's call
is the probe, which a request waits for only as long as its other blocks take (a required
block's probe: its whole deadline, the request cannot answer without it).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from ensemble.breaker import BreakerSettings, Call, CircuitBreaker, State
from ensemble.serving.base import (
    BlsAdapter,
    RequestError,
    ServiceError,
    optional_array,
    read_kinds,
)
from ensemble.serving.metrics import FAILSAFE_MISSING, BreakerMetrics, LabelledCounter
from ensemble.stages import TokenBatch, TokenLimits
from ensemble.validation import InvalidInput, Validator
from export.registry import (
    ATTENTION_MASK,
    CLEAN_POSITION,
    CLEAN_SESSION,
    CLEAN_TEXT,
    CLEAN_TIMESTAMP,
    EMBEDDERS,
    EMBEDDING,
    EXPERT_WEIGHTS,
    FLAG,
    FOCUS,
    FUSED,
    FUSEMOE_MODEL,
    FUSION_VERSION,
    GATE_CONTROLS,
    INPUT_IDS,
    KIND,
    MISSING,
    PREPROCESS_MODEL,
    PRESENCE,
    REDACTIONS,
    SELECTED_EXPERTS,
    SEQUENCE,
    SESSION,
    TEMPERATURE,
    TEXT,
    TIMESTAMP,
    TOKENIZER_FAMILIES,
    TOP_K,
    TRUNCATE,
    TRUNCATED,
    TRUNCATED_SUFFIX,
    Input,
    Kind,
    Limits,
    tokenizer_family,
)


class StepError(ServiceError):
    """A step's error response. Triton 2.51 hands a BLS caller every step error as INTERNAL,
    whatever its code, so the caller's mistakes are found before the steps run (_validate);
    what a step still refuses is a fault of ours or overload (UNAVAILABLE)."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")


async def call(model: str, inputs: dict[str, np.ndarray], outputs: list[str],
               optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """One step's answer: each of ``outputs`` it gave; one it did not give is a StepError
    unless ``optional``."""
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()])
    response = await request.async_exec()
    if response.has_error():
        raise StepError(model, response.error().message())
    answer = {}
    for name in outputs:
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        if tensor is not None:
            answer[name] = tensor.as_numpy()
        elif name not in optional:
            raise StepError(model, f"its answer has no {name}")
    return answer


class TritonPythonModel(BlsAdapter):
    def setup(self) -> None:
        p = self.params
        self.deadline_s = float(p["deadline_ms"]) / 1000.0
        self.required = [r for r in p["required"].split(",") if r]
        self.min_others = int(p["min_other_blocks"])
        # The same checks as the steps, with the same limits, so that the caller's mistakes
        # are INVALID_ARG here too.
        self.validator = Validator(Limits.from_parameters(p))
        repository = self.directory.parent.parent
        self.token_limits = TokenLimits.read(repository)
        settings = BreakerSettings(
            failures=int(p["breaker_failures"]), window_s=float(p["breaker_window_ms"]) / 1000,
            cooldown_s=float(p["breaker_cooldown_ms"]) / 1000, probes=int(p["breaker_probes"]))
        self.breaker_metrics = BreakerMetrics([s.id for s in EMBEDDERS],
                                              [state.label for state in State])

        def on_change(block: str):
            def moved(before: State, to: State) -> None:
                self.breaker_metrics.moved(block, int(to), to.label)
                pb_utils.Logger.log_warn(f"{block}: circuit breaker {before.label} -> {to.label}")
            return moved

        self.breakers = {s.id: CircuitBreaker(settings, on_change(s.id)) for s in EMBEDDERS}
        self.missing_blocks = LabelledCounter(
            FAILSAFE_MISSING, "Blocks (one per text) the fail-safe fused without: their "
            "embedder failed or missed the deadline", "block", [s.id for s in EMBEDDERS])

    def _validate(self, request, given: dict[str, np.ndarray]) -> tuple[int, list[Kind]]:
        """Rows and kinds of a request whose TEXT, TIMESTAMP, SESSION, SEQUENCE, KIND and gate
        controls are valid (RequestError naming the field otherwise)."""
        try:
            rows = len(self.validator.texts(given[TEXT]))
            self.validator.times(rows, given[TIMESTAMP], given.get(SESSION), given.get(SEQUENCE))
            self.validator.controls(rows, given.get(TOP_K), given.get(TEMPERATURE),
                                    given.get(FOCUS), given.get(PRESENCE))
        except InvalidInput as err:
            raise RequestError(str(err)) from err
        return rows, read_kinds(request, rows)

    def _settle(self, block: str, call: Call):
        """The breaker's bookkeeping when a block's call ends, awaited or not."""
        def settled(task: asyncio.Future) -> None:
            if task.cancelled():
                return
            if task.exception() is None:
                self.breakers[block].succeeded(call)
            else:
                self.breakers[block].failed(call)
        return settled

    async def run(self, request):
        start = time.monotonic()
        given = {}
        for name in (TEXT, TIMESTAMP, SESSION, SEQUENCE, KIND, TRUNCATE, *GATE_CONTROLS):
            value = optional_array(request, name)
            if value is not None:
                given[name] = value
        if TEXT not in given or TIMESTAMP not in given:
            raise RequestError(f"{TEXT} and {TIMESTAMP} are required")
        _, kinds = self._validate(request, given)
        clean = await call(PREPROCESS_MODEL,
                           {n: given[n] for n in (TEXT, TIMESTAMP, SESSION, SEQUENCE) if n in given},
                           [CLEAN_TEXT, CLEAN_TIMESTAMP, CLEAN_SESSION, CLEAN_POSITION, REDACTIONS])
        tokens = dict(zip([f.name for f in TOKENIZER_FAMILIES], await asyncio.gather(*(
            call(f.triton_model, {TEXT: clean[CLEAN_TEXT]}, [INPUT_IDS, ATTENTION_MASK])
            for f in TOKENIZER_FAMILIES))))
        if TRUNCATE in given and not np.all(given[TRUNCATE]):
            refusal = self.token_limits.refusal(
                {name: TokenBatch(t[INPUT_IDS], t[ATTENTION_MASK]) for name, t in tokens.items()},
                kinds)
            if refusal:
                raise RequestError(refusal)
        rows = clean[CLEAN_TEXT].shape[0]

        async def block(spec):
            if spec.input is Input.TOKENS:
                inputs = dict(tokens[tokenizer_family(spec.tokenizer or "").name])
                if spec.convention.kind_aware and KIND in given:
                    inputs[KIND] = given[KIND]
                if TRUNCATE in given:
                    inputs[TRUNCATE] = given[TRUNCATE]
                return await call(spec.triton_model, inputs, [EMBEDDING, FLAG], (FLAG,))
            if spec.input is Input.TEXT:
                inputs = {TEXT: clean[CLEAN_TEXT]}
            elif spec.id == "E4":  # a session and a position (SEQUENCE, else the timestamp)
                inputs = {TIMESTAMP: clean[CLEAN_POSITION], SESSION: clean[CLEAN_SESSION]}
            else:
                inputs = {TIMESTAMP: clean[CLEAN_TIMESTAMP]}
            return await call(spec.triton_model, inputs, [EMBEDDING])

        remaining = max(0.0, self.deadline_s - (time.monotonic() - start))
        calls = {s.id: self.breakers[s.id].admit() for s in EMBEDDERS}
        tasks = {}
        for spec in EMBEDDERS:
            if calls[spec.id] is not Call.SKIP:
                task = asyncio.ensure_future(asyncio.wait_for(block(spec), remaining))
                task.add_done_callback(self._settle(spec.id, calls[spec.id]))
                tasks[spec.id] = task
        awaited = [t for b, t in tasks.items()
                   if calls[b] is Call.NORMAL or b in self.required]
        if awaited:
            await asyncio.wait(awaited)
        results: list[object] = []
        for spec in EMBEDDERS:
            task = tasks.get(spec.id)
            if task is None:
                results.append(ServiceError("skipped: its circuit breaker is open"))
            elif not task.done():  # a probe still out: it settles the breaker when it ends
                results.append(ServiceError("its circuit breaker's probe had not answered "
                                            "when the other blocks had"))
            elif task.cancelled() or task.exception() is not None:
                results.append(task.exception() if not task.cancelled()
                               else asyncio.CancelledError())
            else:
                results.append(task.result())
        fuse_inputs: dict[str, np.ndarray] = {}
        present = np.ones((rows, len(EMBEDDERS)), dtype=bool)
        reasons = {}
        for j, (spec, result) in enumerate(zip(EMBEDDERS, results)):
            if isinstance(result, BaseException):
                present[:, j] = False
                reasons[spec.id] = ("no answer within the deadline"
                                    if isinstance(result, asyncio.TimeoutError) else str(result))
                fuse_inputs[spec.block_name] = np.zeros((rows, spec.dim), dtype=np.float32)
                flag = np.zeros((rows, 1), dtype=bool)
            else:
                fuse_inputs[spec.block_name] = result[EMBEDDING]
                flag = result.get(FLAG, np.zeros((rows, 1), dtype=bool))
            if spec.input is Input.TOKENS:
                fuse_inputs[spec.block_name + TRUNCATED_SUFFIX] = flag
        missing = [s.id for s, r in zip(EMBEDDERS, results) if isinstance(r, BaseException)]
        for block in missing:
            self.missing_blocks.add(block, rows)
        for required in self.required:
            if required in missing:
                raise ServiceError(f"{required} is required and did not answer: "
                                   f"{reasons[required]}")
        others = len(EMBEDDERS) - len(self.required) - len(missing)
        if others < self.min_others:
            raise ServiceError(f"only {others} embedders besides {', '.join(self.required)} "
                               f"answered within {self.deadline_s * 1000:.0f} ms; "
                               f"{self.min_others} are needed (missing: {', '.join(missing)})")
        # The caller's own gate controls go through; a block that did not answer is missing
        # whatever the caller's PRESENCE says.
        for name in GATE_CONTROLS:
            if name in given:
                fuse_inputs[name] = given[name]
        if PRESENCE in given:  # its rows were checked with the other controls (_validate)
            fuse_inputs[PRESENCE] = given[PRESENCE].astype(bool) & present
        else:
            fuse_inputs[PRESENCE] = present
        fused = await call(FUSEMOE_MODEL, fuse_inputs,
                           [FUSED, EXPERT_WEIGHTS, SELECTED_EXPERTS, TRUNCATED, FUSION_VERSION])
        return self.response(fused | {REDACTIONS: clean[REDACTIONS], MISSING: ~present})
