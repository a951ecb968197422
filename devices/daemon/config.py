"""The daemon's configuration: one YAML file, validated before anything opens.

``edgesight run --bundle B --source S`` needs no file: every field has a default that works on a
Raspberry Pi. A file (``edgesight run --config camera.yaml``) sets any of them; ``edgesight config
check`` validates one and ``edgesight config schema`` prints the JSON schema for editors.

Every model forbids unknown fields (a typo is an error naming the field, not a silently ignored
setting). Times are in seconds, boxes and zones in pixels of the camera frame unless a field says
``normalized``.

Length: it is the reference of every setting a user writes, one small model per section with its
validators and the generated Markdown reference (about 490 lines, mostly field declarations).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devices.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Model):
    """Where frames come from (URIs as jetson-utils spells them)."""

    uri: str = Field(
        description="A video file, an image folder, v4l2:///dev/video0 or a camera index (0), rtsp://, http(s)://, "
        "csi://0 (picamera2 on a Raspberry Pi), or a GStreamer pipeline ending in 'appsink'.",
    )
    loop: bool = Field(False, description="File sources: start again at the end instead of ending the run.")
    realtime: bool | None = Field(
        None,
        description="File sources: deliver frames at the file's frame rate, dropping what the detector cannot keep up "
        "with, as a camera would (None: false for `run`, every frame as fast as possible; true for `demo`).",
    )
    stale_after: float = Field(10.0, gt=0, description="Seconds without a frame before the source is reopened.")
    open_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a stream to open.")
    read_timeout: float = Field(5.0, gt=0, description="Seconds one read may block inside OpenCV/FFmpeg.")
    reconnect_initial: float = Field(1.0, gt=0, description="First wait before reopening a lost source.")
    reconnect_max: float = Field(30.0, gt=0, description="Longest wait between reopen attempts (doubling backoff).")
    width: int | None = Field(None, ge=16, description="Requested capture width (cameras only).")
    height: int | None = Field(None, ge=16, description="Requested capture height (cameras only).")
    fps: float | None = Field(None, gt=0, description="Requested capture frame rate (cameras only).")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport; tcp survives lossy Wi-Fi.")

    @field_validator("uri", mode="before")
    @classmethod
    def _camera_index(cls, value: object) -> object:
        # YAML reads `uri: 0` as a number; a camera index is what it means (the CLI's --source 0 is text already).
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _backoff_order(self) -> SourceConfig:
        if self.reconnect_max < self.reconnect_initial:
            raise ValueError(
                f"reconnect_max ({self.reconnect_max}) is below reconnect_initial ({self.reconnect_initial}); "
                "set reconnect_max to at least reconnect_initial"
            )
        return self


class MotionConfig(_Model):
    """The motion gate: the detector runs only when something moved (or every ``max_idle`` seconds)."""

    enabled: bool = True
    width: int = Field(
        160, ge=16, description="About the width of the small grey frame the difference is taken on (the frame is "
        "shrunk by a whole factor)."
    )
    pixel_delta: int = Field(30, ge=1, le=255, description="Grey-level change that counts a pixel as changed.")
    min_area: float = Field(
        0.003, gt=0, lt=1, description="Share of the frame's pixels that must change for motion."
    )
    max_idle: float = Field(5.0, gt=0, description="Run the detector at least this often, so still objects are seen.")
    min_interval: float = Field(
        0.0,
        ge=0,
        description="Seconds between two detector runs at least, also while things move (0: no limit; 0.2 caps the "
        "detector at 5 runs a second, like Frigate's detect fps).",
    )
    lighting_jump: float = Field(
        0.5, gt=0, le=1, description="A change over more than this share of the frame is a lighting jump, not motion."
    )
    alpha: float = Field(
        0.2, gt=0, le=1, description="How fast the background follows the scene (share of each new frame blended in)."
    )


class ClassRule(_Model):
    """Per-class filtering of detections and tracks."""

    min_score: float = Field(0.3, ge=0, le=1, description="A single detection counts from this score.")
    threshold: float = Field(
        0.5, ge=0, le=1, description="A track becomes an object when the median score over the track reaches this."
    )
    min_area: float = Field(0.0, ge=0, description="Smallest box area in pixels.")


def _default_classes() -> dict[str, ClassRule]:
    return {"pedestrian": ClassRule(), "stop_sign": ClassRule()}


class TrackerConfig(_Model):
    """IoU tracking across frames."""

    iou: float = Field(0.3, gt=0, lt=1, description="Smallest IoU that continues a track.")
    min_hits: int = Field(3, ge=1, description="Frames with the object before a track becomes an object (a 'new').")
    max_missing: float = Field(2.0, gt=0, description="Seconds without the object before its track ends.")


class ZoneConfig(_Model):
    """A polygon; an object is in the zone when the bottom-centre of its box is inside."""

    name: str = Field(min_length=1, pattern=r"^[^/#+]+$",
                      description="In events and in MQTT topics (counts/<zone>/<label>), so no '/', '#' or '+'.")
    points: tuple[tuple[float, float], ...] = Field(min_length=3, description="Polygon corners [x, y].")
    normalized: bool = Field(False, description="Points are fractions of the frame's width and height.")
    labels: tuple[str, ...] = Field((), description="Only these labels count in this zone (empty: all).")

    @model_validator(mode="after")
    def _normalized_range(self) -> ZoneConfig:
        _check_normalized(f"zone '{self.name}'", self.points, self.normalized)
        return self


class LineConfig(_Model):
    """A counting line: objects whose bottom-centre crosses it are counted, in each direction."""

    name: str = Field("line", min_length=1, pattern=r"^[^/#+]+$",
                      description="In events and in MQTT topics (crossings/<line>/<direction>/<label>), so no '/', "
                                  "'#' or '+'.")
    a: tuple[float, float]
    b: tuple[float, float]
    normalized: bool = False
    labels: tuple[str, ...] = Field(("pedestrian",), description="Labels that are counted (empty: all).")
    margin: float = Field(
        0.01,
        ge=0,
        lt=0.5,
        description="Share of the frame height the bottom-centre must go past the line to count: someone standing "
        "on the line is not counted again and again.",
    )

    @model_validator(mode="after")
    def _proper_segment(self) -> LineConfig:
        if self.a == self.b:
            raise ValueError(f"line '{self.name}' has a == b == {list(self.a)}; give two different end points")
        _check_normalized(f"line '{self.name}'", (self.a, self.b), self.normalized)
        return self


def _check_normalized(what: str, points: tuple[tuple[float, float], ...], normalized: bool) -> None:
    if normalized:
        outside = [list(p) for p in points if not (0 <= p[0] <= 1 and 0 <= p[1] <= 1)]
        if outside:
            raise ValueError(
                f"{what} is normalized but has points {outside} outside [0, 1]; "
                "give fractions of the frame size, or set normalized: false for pixels"
            )


class EventsConfig(_Model):
    """What the daemon keeps on disk about events."""

    spool: Path = Field(Path("spool/events.sqlite"), description="Durable queue of events not yet acknowledged.")
    spool_max_events: int = Field(100_000, ge=10, description="Beyond this the oldest events are dropped (counted).")
    snapshots: Path | None = Field(Path("snapshots"), description="Best-snapshot JPEG per event (None: off).")
    snapshots_max_mb: float = Field(500.0, gt=0, description="Oldest snapshots are deleted beyond this.")
    update_min_interval: float = Field(
        1.0, ge=0, description="Seconds between two 'update' events of one track (zone changes always go out)."
    )
    snapshot_min_gain: float = Field(
        0.05, ge=0, le=1, description="Score gain over the last snapshot that makes a better snapshot (an 'update')."
    )
    snapshot_quality: int = Field(85, ge=10, le=100, description="JPEG quality of snapshots.")


class MqttConfig(_Model):
    """An MQTT broker (Mosquitto, EMQX, Home Assistant's add-on): events, counts and availability."""

    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field(
        "edgesight",
        pattern=r"^[^#+]+$",
        description="Topics: <prefix>/<camera>/events, .../counts/<label>, .../availability",
    )
    client_id: str | None = Field(None, description="None: edgesight-<camera>.")
    username: str | None = None
    password_file: Path | None = Field(None, description="File holding the password (never in the config itself).")
    qos: Literal[1, 2] = Field(1, description="Events need an acknowledgement to leave the spool, so at least 1.")
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="MQTT protocol version.")
    keepalive: int = Field(30, ge=5)
    tls: bool = Field(False, description="TLS with the system's CA certificates (port 8883 usually).")
    max_inflight: int = Field(20, ge=1, description="Events sent and not yet acknowledged by the broker, at most.")
    reconnect_max: int = Field(10, ge=1, description="Longest wait between reconnect attempts (from 1 s, doubling).")
    snapshots: bool = Field(
        True,
        description="Each event's best snapshot (JPEG bytes) on <prefix>/<camera>/snapshot/<label>, retained: the "
                    "latest per class, for consumers on other machines (Home Assistant shows it as a camera).",
    )
    discovery_prefix: str | None = Field(
        "homeassistant",
        pattern=r"^[^#+]+$",
        description="Home Assistant MQTT discovery: a count sensor and an occupancy sensor per class appear in "
                    "Home Assistant by themselves (retained config under <prefix>/sensor and <prefix>/binary_sensor). "
                    "null: none.",
    )


class WebhookConfig(_Model):
    """An HTTP endpoint that gets one POST per event (JSON body)."""

    url: str = Field(pattern=r"^https?://")
    timeout: float = Field(5.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    backoff_initial: float = Field(1.0, gt=0, description="First wait before a failed POST is tried again.")
    backoff_max: float = Field(60.0, gt=0, description="Longest wait between tries (doubling); tries never stop.")

    @model_validator(mode="after")
    def _backoff_order(self) -> WebhookConfig:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) is below backoff_initial ({self.backoff_initial}); "
                "set backoff_max to at least backoff_initial"
            )
        return self


class JsonlConfig(_Model):
    """A local file with one event per line (JSON Lines), rotated by size."""

    path: Path
    max_mb: float = Field(50.0, gt=0, description="Rotate beyond this size.")
    backups: int = Field(5, ge=0, description="Rotated files kept.")


class SinksConfig(_Model):
    mqtt: MqttConfig | None = None
    webhook: WebhookConfig | None = None
    jsonl: JsonlConfig | None = None


class HttpConfig(_Model):
    """The daemon's HTTP server: /metrics, /healthz, /api/status (and the live page)."""

    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 exposes it to the network.")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port.")
    token_file: Path | None = Field(None, description="File with the token that state-changing calls (reload) need.")


class DaemonConfig(_Model):
    """The whole daemon: ``edgesight run --config camera.yaml``."""

    camera: str = Field("camera", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                        description="This camera's name, in events and MQTT topics.")
    bundle: Path = Field(description="Bundle folder written by `edgesight export`.")
    runtime: Literal["auto", "onnxruntime", "ai_edge_litert", "tflite_runtime"] = Field(
        "auto", description="Runtime (auto: ONNX Runtime for .onnx bundles, LiteRT or tflite-runtime for .tflite)."
    )
    threads: int | None = Field(None, ge=1, description="Runtime threads (None: every core), of each worker.")
    workers: int = Field(
        1, ge=1, le=8, description="Copies of the model run side by side on successive frames: more frames a second "
        "when the model is slower than the camera, for one model's memory each; set `threads` so that workers x "
        "threads is the cores to use (2 cores: 2 workers of 1 thread)."
    )
    detect_timeout: float = Field(10.0, gt=0, description="A detector call stuck longer is abandoned and reopened.")
    watch_bundle: bool = Field(
        True, description="Reload when the bundle's files change on disk (verified first; the old one keeps running "
        "if the new one fails). SIGHUP and POST /api/reload reload in any case."
    )
    source: SourceConfig
    motion: MotionConfig = MotionConfig()
    classes: dict[str, ClassRule] = Field(default_factory=_default_classes)
    tracker: TrackerConfig = TrackerConfig()
    zones: tuple[ZoneConfig, ...] = ()
    line: LineConfig | None = None
    events: EventsConfig = EventsConfig()
    sinks: SinksConfig = SinksConfig()
    http: HttpConfig | None = HttpConfig()

    @field_validator("zones")
    @classmethod
    def _unique_zone_names(cls, zones: tuple[ZoneConfig, ...]) -> tuple[ZoneConfig, ...]:
        names = [z.name for z in zones]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"zone names {duplicates} are used more than once; give each zone its own name")
        return zones


# --- reading a config ------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Read a YAML config (optional) and apply overrides on top (command-line flags), then validate.

    Args:
        path: The YAML file; None: only ``overrides``.
        overrides: Nested fields that replace the file's (``{"source": {"uri": "0"}}``); sections are
            merged, so ``--mqtt`` keeps the file's MQTT credentials.

    Raises:
        ConfigError: The file is missing or not YAML (line and column), or fields are invalid (each
            named with its value and a fix).
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    data = merge(data, overrides or {})
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, str(path) if path is not None else "the command line") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``.

    Raises:
        ConfigError: Missing file, YAML syntax error (with line and column) or not a mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}",
                          "check the path (`edgesight config schema` prints every field)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}",
            "fix the syntax there (indent with spaces, `key: value`, quote values holding ': ')",
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not a mapping of settings",
                          "write `key: value` lines, e.g. `bundle: bundles/yolox-nano-tflite-int8`")
    return data


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_error(exc: ValidationError, where: str) -> ConfigError:
    """One ``ConfigError`` listing every invalid field as ``field: problem (value); fix``."""
    lines = [_describe(err) for err in exc.errors()]
    noun = "setting is" if len(lines) == 1 else "settings are"
    return ConfigError(
        f"{where}: {len(lines)} {noun} invalid:\n    " + "\n    ".join(lines),
        "correct the fields named above (`edgesight config schema` lists every field with its meaning)",
    )


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    name = ".".join(str(p) for p in loc) or "(top level)"
    kind, ctx = err["type"], err.get("ctx") or {}
    value = "" if kind == "missing" else f" (got {err.get('input')!r})"
    message = err["msg"].removeprefix("Value error, ")
    return f"{name}: {message}{value}; fix: {_fix(kind, ctx, loc)}"


def _fix(kind: str, ctx: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    bounds = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below",
              "less_than_equal": "at most"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"use a value {bounds[kind]} {limit}"
    if kind == "missing":
        return f"add `{loc[-1]}`" + (f" ({_field_help(loc)})" if _field_help(loc) else "")
    if kind == "extra_forbidden":
        known = _known_fields(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return f"{hint}remove it or correct the spelling; allowed here: {', '.join(known)}" if known else "remove it"
    if kind == "literal_error":
        return f"use one of {ctx.get('expected', 'the listed values')}"
    if kind == "string_pattern_mismatch":
        return f"use a value matching {ctx.get('pattern')}" + (f" ({_field_help(loc)})" if _field_help(loc) else "")
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length", ctx.get("max_length"))
        return f"give {'at least' if kind == 'too_short' else 'at most'} {limit} items"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        wanted = _TYPE_WORDS.get(kind.split("_")[0], f"a {kind.split('_')[0]}")
        return f"use {wanted}" + (f" ({_field_help(loc)})" if _field_help(loc) else "")
    return "see the message"


_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "text",
               "path": "a file path", "dict": "a mapping (key: value lines)", "tuple": "a list",
               "list": "a list", "model": "a mapping (key: value lines)"}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the fields at ``loc`` (a path of field names)."""
    model: Any = DaemonConfig
    for part in loc:
        if isinstance(part, int):  # an item of a list (zones.0.name): the list's model holds its fields
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _field_help(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc[:-1])
    info = model.model_fields.get(str(loc[-1])) if model else None
    return (info.description or "") if info else ""


def reference_markdown() -> str:
    """Every field of ``DaemonConfig`` as Markdown tables, one per section (for docs/daemon.md)."""
    lines: list[str] = []
    _section_tables(DaemonConfig, "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _section_tables(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    nested: list[tuple[str, type[BaseModel]]] = []
    title = prefix.rstrip(".") or "top level"
    doc = _first_line(model.__doc__)
    lines += [f"#### `{title}`" + (f": {doc}" if doc else ""), "", "| field | type | default | meaning |",
              "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        sub, key = _nested_model(info.annotation)
        if sub is not None:
            nested.append((f"{prefix}{name}{key}.", sub))
        default = "required" if info.is_required() else _default_text(info)
        meaning = info.description or (_first_line(sub.__doc__) if sub else "")
        lines.append(f"| `{prefix}{name}` | {_type_text(info.annotation)} | {default} | "
                     f"{(meaning or '').replace('|', '/')} |")
    lines.append("")
    for sub_prefix, sub in nested:
        _section_tables(sub, sub_prefix, lines)


def _first_line(doc: str | None) -> str:
    return next(iter((doc or "").strip().splitlines()), "")


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds (directly, optionally, in a list or as dict values) and how its path reads."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin is dict and args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return args[-1], ".<name>"
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    for arg in args:
        model, key = _nested_model(arg)
        if model is not None:
            return model, key
    return None, ""


def _default_text(info: Any) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return ", ".join(f"`{k}`" for k in value)
    if value is None:
        return "`null`"
    if value in ((), {}):
        return "`[]`"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is tuple:
        return f"list of {_type_text(args[0])}" if args and args[-1] is Ellipsis else "list"
    if origin is dict:
        return f"mapping of {_type_text(args[-1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    names = {int: "integer", float: "number", bool: "boolean", str: "text", Path: "path"}
    return names.get(annotation, str(annotation))
