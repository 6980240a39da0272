"""What the public front checks in an inference request before Triton sees it.

Triton 2.51's HTTP front allocates what a request *declares* (shape x element size) before
it compares that with the data the request carries: a JSON input declaring 2^40 rows with
three values made it allocate terabytes and abort, taking every model down with it, and
most other structural faults (a shape that disagrees with its data, a datatype the model
does not take, an ``inputs`` that is not a list) came back as HTTP 500. So every declared
size is checked here against the model's config and against the data actually carried,
with Python's unbounded integers (no overflow), before anything is forwarded. What passes
is a request whose tensors are exactly as large as the bytes that carry them, for an input
the model has, of the datatype and dimensions it takes.

The same checks serve the three encodings of a KServe v2 request: JSON, JSON with binary
tensors (``Inference-Header-Content-Length``) and gRPC's ``ModelInferRequest``. Each fault
is a :class:`RequestFault` whose message names the input and what was wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Bytes per element of each KServe v2 datatype (BYTES items carry their own length).
ELEMENT_BYTES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
                 "BF16": 2, "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8,
                 "FP64": 8, "BYTES": 0}
INTEGER_RANGES = {f"{kind}{bits}": ((0, 2**bits - 1) if kind == "UINT"
                                    else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))
                  for kind in ("INT", "UINT") for bits in (8, 16, 32, 64)}
# Request parameters Triton reads as unsigned integers (a negative one is refused).
UNSIGNED_PARAMETERS = ("priority", "timeout", "sequence_id")
SHARED_MEMORY = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")
# gRPC: the typed ``contents`` field that carries each datatype (FP16 and BF16 go raw only).
GRPC_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                 "INT32": "int_contents", "INT64": "int64_contents",
                 "UINT8": "uint_contents", "UINT16": "uint_contents",
                 "UINT32": "uint_contents", "UINT64": "uint64_contents",
                 "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
GRPC_CONTENT_FIELDS = tuple(sorted(set(GRPC_CONTENTS.values())))
MAX_NESTING = 64  # JSON ``data`` nested deeper than any tensor rank Triton takes


class RequestFault(ValueError):
    """A request refused before it reaches Triton; the message names the input."""


class UnknownModel(RequestFault):
    """The request names no loaded model (HTTP 404, gRPC NOT_FOUND)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """What a loaded model takes, read from the config Triton reports for it."""

    name: str
    max_batch_size: int
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    versions: tuple[int, ...] = ()  # the versions loaded and ready

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    versions: Iterable[str | int] = ()) -> ModelSpec:
        def tensors(entries: Iterable[Mapping[str, Any]]) -> dict[str, TensorSpec]:
            out = {}
            for entry in entries:
                datatype = str(entry.get("data_type", "")).removeprefix("TYPE_")
                out[entry["name"]] = TensorSpec(
                    entry["name"], "BYTES" if datatype == "STRING" else datatype,
                    tuple(int(d) for d in entry.get("dims", ())), bool(entry.get("optional")))
            return out

        return cls(config["name"], int(config.get("max_batch_size", 0)),
                   tensors(config.get("input", ())), tensors(config.get("output", ())),
                   tuple(sorted(int(v) for v in versions)))

    def check_version(self, version: str) -> None:
        """A version named in a request (empty: the default one) must be loaded; Triton
        answers an unknown version like a model being loaded again would, so it is told
        apart here."""
        if not version:
            return
        if not version.isascii() or not version.isdigit():
            raise RequestFault(f"model '{self.name}' version {_short(version)}: a version "
                               "is an integer > 0")
        if int(version) not in self.versions:
            loaded = ", ".join(map(str, self.versions)) or "none"
            raise UnknownModel(f"model '{self.name}' version {version}: not loaded "
                               f"(loaded: {loaded})")

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def elements(self, name: str, datatype: Any, shape: Any) -> int:
        """The element count an input declares, once its name, datatype and shape are ones
        this model takes."""
        spec = self.inputs.get(name) if isinstance(name, str) else None
        if spec is None:
            taken = ", ".join(self.inputs)
            raise RequestFault(f"input '{name}': model '{self.name}' has no such input "
                               f"(it takes {taken})")
        if datatype != spec.datatype:
            raise RequestFault(f"input '{name}': datatype {datatype!r} where model "
                               f"'{self.name}' takes {spec.datatype}")
        if not isinstance(shape, list | tuple) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise RequestFault(f"input '{name}': shape must be a list of integers, "
                               f"got {_short(shape)}")
        expected = ([-1] if self.batched else []) + list(spec.dims)
        if len(shape) != len(expected):
            raise RequestFault(f"input '{name}': shape {_short(shape)} has {len(shape)} "
                               f"dimensions; model '{self.name}' takes {len(expected)} "
                               f"({_dims(self, spec)})")
        for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
            if got < 0:
                raise RequestFault(f"input '{name}': shape[{axis}] is {got}; dimensions "
                                   "cannot be negative")
            if want != -1 and got != want:
                raise RequestFault(f"input '{name}': shape[{axis}] is {got}; model "
                                   f"'{self.name}' takes {want} ({_dims(self, spec)})")
        if self.batched and not 1 <= shape[0] <= self.max_batch_size:
            raise RequestFault(f"input '{name}': shape[0] (the batch) is {shape[0]}; model "
                               f"'{self.name}' takes 1 to {self.max_batch_size} rows")
        count = 1
        for d in shape:
            count *= d  # Python integers: no overflow, however large the dims
        return count

    def check_inputs(self, shapes: Mapping[str, list[int]]) -> None:
        """Every required input present, every batched input with the same batch."""
        missing = [n for n, spec in self.inputs.items() if not spec.optional and n not in shapes]
        if missing:
            raise RequestFault(f"input '{missing[0]}': missing; model '{self.name}' requires "
                               + ", ".join(n for n, s in self.inputs.items() if not s.optional))
        if self.batched:
            batches = {name: shape[0] for name, shape in shapes.items()}
            first = next(iter(batches))
            for name, rows in batches.items():
                if rows != batches[first]:
                    raise RequestFault(f"input '{name}': batch of {rows} rows where input "
                                       f"'{first}' has {batches[first]}")

    def check_output(self, name: Any) -> None:
        if not isinstance(name, str) or name not in self.outputs:
            raise RequestFault(f"output '{name}': model '{self.name}' has no such output "
                               f"(it gives {', '.join(self.outputs)})")


def _dims(model: ModelSpec, spec: TensorSpec) -> str:
    dims = ", ".join("any" if d == -1 else str(d) for d in spec.dims)
    return f"[rows, {dims}]" if model.batched else f"[{dims}]"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_parameters(where: str, parameters: Any) -> Mapping[str, Any]:
    """A ``parameters`` object (``{}`` when absent; an explicit null is refused, as Triton
    cannot read it)."""
    if not isinstance(parameters, dict):
        raise RequestFault(f"{where}parameters: must be an object, got {_short(parameters)}")
    for key, value in parameters.items():
        if not isinstance(value, bool | int | str | float):
            raise RequestFault(f"{where}parameters.{key}: must be a boolean, number or "
                               f"string, got {_short(value)}")
        if key in UNSIGNED_PARAMETERS and (not isinstance(value, int) or isinstance(value, bool)
                                           or not 0 <= value < 2**64):
            raise RequestFault(f"{where}parameters.{key}: must be an integer from 0 to "
                               f"2^64-1, got {_short(value)}")
        if key in ("binary_data", "binary_data_output") and not isinstance(value, bool):
            raise RequestFault(f"{where}parameters.{key}: must be true or false, "
                               f"got {_short(value)}")
    return parameters


def _shared_memory(where: str, parameters: Mapping[str, Any], size: int | None) -> bool:
    """Whether a tensor lives in a registered shared-memory region (then it carries no data;
    Triton checks the region, which only an admin can register)."""
    if not any(key in parameters for key in SHARED_MEMORY):
        return False
    region = parameters.get("shared_memory_region")
    if not isinstance(region, str) or not region:
        raise RequestFault(f"{where}: shared_memory_region must name a registered region")
    for key in ("shared_memory_offset", "shared_memory_byte_size"):
        value = parameters.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise RequestFault(f"{where}: {key} must be an integer from 0 to 2^63-1")
    if size is not None and parameters.get("shared_memory_byte_size") != size:
        raise RequestFault(f"{where}: shared_memory_byte_size is "
                           f"{parameters.get('shared_memory_byte_size')}; the declared shape "
                           f"takes {size} bytes")
    return True


def _fixed_size(datatype: str, count: int) -> int | None:
    """Bytes of ``count`` elements; None for BYTES (each item carries its own length)."""
    return count * ELEMENT_BYTES[datatype] if datatype != "BYTES" else None


# ---- JSON and binary tensors (HTTP) ---------------------------------------------------------

def _flatten(name: str, data: Any) -> list[Any]:
    """The scalars of a (possibly nested, row-major) JSON ``data`` array, in order."""
    if not isinstance(data, list):
        raise RequestFault(f"input '{name}': data must be an array, got {_short(data)}")
    out: list[Any] = []
    stack: list[tuple[Iterable[Any], int]] = [(iter(data), 1)]
    while stack:
        items, depth = stack[-1]
        for item in items:
            if isinstance(item, list):
                if depth >= MAX_NESTING:
                    raise RequestFault(f"input '{name}': data nested deeper than "
                                       f"{MAX_NESTING} arrays")
                stack.append((iter(item), depth + 1))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _check_values(name: str, datatype: str, values: list[Any]) -> None:
    if datatype == "BYTES":
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        kind = "a string"
    elif datatype == "BOOL":
        bad = next((i for i, v in enumerate(values) if not isinstance(v, bool)), None)
        kind = "true or false"
    elif datatype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[datatype]
        bad = next((i for i, v in enumerate(values) if not isinstance(v, int)
                    or isinstance(v, bool) or not low <= v <= high), None)
        kind = f"an integer from {low} to {high}"
    elif datatype in ("FP32", "FP64"):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, int | float)
                    or isinstance(v, bool)), None)
        kind = "a number"
    else:
        raise RequestFault(f"input '{name}': {datatype} tensors must be sent as binary data")
    if bad is not None:
        raise RequestFault(f"input '{name}': data[{bad}] is {_short(values[bad])}; each "
                           f"{datatype} element must be {kind}")


def _bytes_items(name: str, blob: memoryview) -> int:
    """How many length-prefixed BYTES items ``blob`` holds; a length past the end is a fault."""
    count, offset, end = 0, 0, len(blob)
    while offset < end:
        if end - offset < 4:
            raise RequestFault(f"input '{name}': binary data ends inside an item's 4-byte "
                               "length")
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4 + length
        if offset > end:
            raise RequestFault(f"input '{name}': item {count} declares {length} bytes past "
                               "the end of its binary data")
        count += 1
    return count


def parse_header_length(value: str | None, body_bytes: int) -> int | None:
    """``Inference-Header-Content-Length``: where the JSON header ends and binary tensors
    begin (None: the whole body is JSON)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise RequestFault(f"Inference-Header-Content-Length: {_short(value)} is not a "
                           "non-negative integer")
    length = int(text)
    if not 0 < length <= body_bytes:
        raise RequestFault(f"Inference-Header-Content-Length: {length} is outside the "
                           f"body's {body_bytes} bytes")
    return length


def check_http(model: ModelSpec, request: Any, binary: memoryview) -> None:
    """A KServe v2 JSON inference request, with ``binary`` the bytes after its JSON header
    (empty without the binary-tensor extension)."""
    if not isinstance(request, dict):
        raise RequestFault(f"request body: must be a JSON object, got {_short(request)}")
    if "id" in request and not isinstance(request["id"], str):
        raise RequestFault(f"id: must be a string, got {_short(request['id'])}")
    _check_parameters("", request.get("parameters", {}))
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestFault(f"inputs: must be a non-empty array of tensors, got {_short(inputs)}")
    shapes: dict[str, list[int]] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestFault(f"inputs[{i}]: must be an object, got {_short(tensor)}")
        name = tensor.get("name")
        count = model.elements(name, tensor.get("datatype"), tensor.get("shape"))
        if name in shapes:
            raise RequestFault(f"input '{name}': given twice")
        datatype = tensor["datatype"]
        parameters = _check_parameters(f"input '{name}': ", tensor.get("parameters", {}))
        size = _fixed_size(datatype, count)
        declared = parameters.get("binary_data_size")
        if _shared_memory(f"input '{name}'", parameters, size):
            if "data" in tensor or declared is not None:
                raise RequestFault(f"input '{name}': data given beside a shared-memory region")
        elif declared is not None:
            if "data" in tensor:
                raise RequestFault(f"input '{name}': both data and binary_data_size given")
            if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
                raise RequestFault(f"input '{name}': binary_data_size must be a non-negative "
                                   f"integer, got {_short(declared)}")
            if offset + declared > len(binary):
                raise RequestFault(f"input '{name}': binary_data_size {declared} runs past "
                                   f"the {len(binary) - offset} binary bytes left in the body")
            blob = binary[offset:offset + declared]
            offset += declared
            if size is not None and declared != size:
                raise RequestFault(f"input '{name}': binary_data_size is {declared} bytes; "
                                   f"shape {tensor['shape']} of {datatype} takes {size}")
            if size is None and (items := _bytes_items(name, blob)) != count:
                raise RequestFault(f"input '{name}': shape {tensor['shape']} declares "
                                   f"{count} elements; the binary data carries {items}")
        else:
            if "data" not in tensor:
                raise RequestFault(f"input '{name}': no data (give data, or binary_data_size "
                                   "with the binary-tensor extension)")
            values = _flatten(name, tensor["data"])
            if len(values) != count:
                raise RequestFault(f"input '{name}': shape {tensor['shape']} declares "
                                   f"{count} elements; data carries {len(values)}")
            _check_values(name, datatype, values)
        shapes[name] = tensor["shape"]
    if offset != len(binary):
        raise RequestFault(f"request body: {len(binary) - offset} bytes after the last "
                           "binary tensor belong to no input")
    model.check_inputs(shapes)
    if "outputs" not in request:
        return
    outputs = request["outputs"]
    if not isinstance(outputs, list):
        raise RequestFault(f"outputs: must be an array, got {_short(outputs)}")
    for i, output in enumerate(outputs):
        if not isinstance(output, dict):
            raise RequestFault(f"outputs[{i}]: must be an object, got {_short(output)}")
        model.check_output(output.get("name"))
        parameters = _check_parameters(f"output '{output['name']}': ",
                                       output.get("parameters", {}))
        _check_output_parameters(model, output["name"], parameters)


def _check_output_parameters(model: ModelSpec, name: str, parameters: Mapping[str, Any]) -> None:
    classes = parameters.get("classification")
    if classes is not None:
        if model.outputs[name].datatype == "BYTES":
            raise RequestFault(f"output '{name}': classification needs a numeric output")
        if not isinstance(classes, int) or isinstance(classes, bool) or not 0 <= classes < 2**31:
            raise RequestFault(f"output '{name}': classification must be an integer from 0 "
                               f"to 2^31-1, got {_short(classes)}")
    if any(key in parameters for key in SHARED_MEMORY):
        _shared_memory(f"output '{name}'", parameters, None)


# ---- gRPC -------------------------------------------------------------------------------

def _grpc_parameters(where: str, parameters: Any) -> dict[str, Any]:
    """An ``InferParameter`` map as plain values (each holds one of bool, int, string, ...)."""
    plain = {key: getattr(value, value.WhichOneof("parameter_choice"))
             if value.WhichOneof("parameter_choice") else None
             for key, value in parameters.items()}
    return dict(_check_parameters(where, plain))


def check_grpc(model: ModelSpec, request: Any) -> None:
    """A ``ModelInferRequest`` (tritonclient's ``service_pb2``)."""
    _grpc_parameters("", request.parameters)
    if not request.inputs:
        raise RequestFault("inputs: a request needs at least one input tensor")
    raw = request.raw_input_contents
    carried = [t for t in request.inputs
               if not any(key in t.parameters for key in SHARED_MEMORY)]
    if raw and len(raw) != len(carried):
        raise RequestFault(f"raw_input_contents: {len(raw)} buffers for {len(carried)} "
                           "inputs (raw contents are given for every input or for none)")
    shapes: dict[str, list[int]] = {}
    buffers = iter(raw)
    for tensor in request.inputs:
        name, shape = tensor.name, list(tensor.shape)
        count = model.elements(name, tensor.datatype, shape)
        if name in shapes:
            raise RequestFault(f"input '{name}': given twice")
        parameters = _grpc_parameters(f"input '{name}': ", tensor.parameters)
        size = _fixed_size(tensor.datatype, count)
        typed = [f for f in GRPC_CONTENT_FIELDS if len(getattr(tensor.contents, f))]
        if _shared_memory(f"input '{name}'", parameters, size):
            if typed:
                raise RequestFault(f"input '{name}': contents given beside a shared-memory "
                                   "region")
        elif raw:
            if typed:
                raise RequestFault(f"input '{name}': contents given beside "
                                   "raw_input_contents")
            blob = next(buffers)
            if size is not None and len(blob) != size:
                raise RequestFault(f"input '{name}': raw contents hold {len(blob)} bytes; "
                                   f"shape {shape} of {tensor.datatype} takes {size}")
            if size is None and (items := _bytes_items(name, memoryview(blob))) != count:
                raise RequestFault(f"input '{name}': shape {shape} declares {count} "
                                   f"elements; the raw contents carry {items}")
        else:
            field = GRPC_CONTENTS.get(tensor.datatype)
            if field is None:
                raise RequestFault(f"input '{name}': {tensor.datatype} tensors must be sent "
                                   "in raw_input_contents")
            if typed and typed != [field]:
                raise RequestFault(f"input '{name}': {tensor.datatype} data goes in "
                                   f"contents.{field}, not {', '.join(typed)}")
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise RequestFault(f"input '{name}': shape {shape} declares {count} "
                                   f"elements; contents carry {len(values)}")
            if tensor.datatype in INTEGER_RANGES and field in ("int_contents", "uint_contents"):
                _check_values(name, tensor.datatype, list(values))
        shapes[name] = shape
    model.check_inputs(shapes)
    for output in request.outputs:
        model.check_output(output.name)
        parameters = _grpc_parameters(f"output '{output.name}': ", output.parameters)
        _check_output_parameters(model, output.name, parameters)
