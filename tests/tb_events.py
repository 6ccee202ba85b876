"""Reads TensorBoard event files back (tests of jaxnet.tracking): TFRecord framing with both
masked CRC-32Cs checked, Events decoded with the protobuf classes tensorboardX ships."""
import struct
from pathlib import Path

import numpy as np
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2


def _masked(data: bytes) -> int:
  x = crc32c(data)
  return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(directory: Path) -> list:
  """Every Event of the event files in `directory`, in file order, framing checked."""
  events = []
  for path in sorted(Path(directory).glob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (n,) = struct.unpack("<Q", header)
      assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == _masked(header), path
      body = data[pos + 12:pos + 12 + n]
      assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == _masked(body), path
      events.append(event_pb2.Event.FromString(body))
      pos += 16 + n
  return events


def scalars_by_tag(directory: Path) -> dict[str, dict[int, float]]:
  """tag -> step -> value as TensorBoard shows it: a session's START marker at step s
  drops what earlier files wrote at steps >= s."""
  out: dict[str, dict[int, float]] = {}
  for ev in read_events(directory):
    if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
      for series in out.values():
        for s in [s for s in series if s >= ev.step]:
          del series[s]
    for v in ev.summary.value:
      out.setdefault(v.tag, {})[ev.step] = v.simple_value
  return out


def f32(x) -> float:
  return float(np.float32(x))
