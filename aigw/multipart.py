"""The head of a multipart/form-data upload: enough of it to route the request, never the file.

An audio upload names its `model` in a form field; the gateway needs it to pick a target (and to
rename it for the target), but the file itself streams to the upstream as it arrives. `read_head`
reads the client's body until the `model` field's value is complete and gives back those bytes,
the fields seen so far and where the model's value lies in them (`rename`). Clients send the
fields before the file (the openai SDKs do); a form whose file comes first is read on to its
`model` field up to `MAX_HEAD` bytes, and refused past that.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aigw.errors import InvalidRequestError, RequestTooLargeError

#: The most read of a form before its `model` field has been seen.
MAX_HEAD = 1024 * 1024
#: A plain field's value longer than this is not kept in `fields` (it still goes upstream).
MAX_FIELD = 4096

_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_NAME = re.compile(rb'name="([^"]*)"', re.IGNORECASE)


@dataclass(slots=True)
class FormHead:
    head: bytes  # the body's first bytes, up to the end of the `model` field's value
    fields: dict[str, str] = field(default_factory=dict)  # plain fields seen, file parts noted
    model_at: tuple[int, int] = (0, 0)  # where the model's value lies in `head`

    def rename(self, model: str) -> bytes:
        """`head` with the model field's value replaced."""
        start, end = self.model_at
        return self.head[:start] + model.encode() + self.head[end:]


def boundary_of(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data` content type; a 400 when it has none."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise InvalidRequestError(
            "A multipart/form-data body needs a boundary in its Content-Type.", param=None
        )
    return (match.group(1) or match.group(2)).encode("latin-1")


async def read_head(
    chunks: AsyncIterator[bytes], boundary: bytes, max_bytes: int = MAX_HEAD
) -> FormHead:
    """Read from `chunks` until the `model` field's value is whole (see the module docstring).

    Raises InvalidRequestError (400) for a form without a `model` field, or whose file comes
    first and is too large to read past; RequestTooLargeError (413) once more than `max_bytes`
    (the request body's limit) was read."""
    delimiter = b"\r\n--" + boundary
    buf = b""
    scanned = 0  # parts before this offset are read
    form = FormHead(b"")
    async for data in chunks:
        buf += data
        while True:
            start = buf.find(b"--" + boundary, scanned)
            if start < 0:
                break
            head_start = start + len(boundary) + 2
            if buf[head_start : head_start + 2] == b"--":
                raise _no_model()  # the closing delimiter: the form has no model field
            head_end = buf.find(b"\r\n\r\n", head_start)
            if head_end < 0:
                break
            headers = buf[head_start:head_end]
            value_start = head_end + 4
            value_end = buf.find(delimiter, value_start)
            name_match = _NAME.search(headers)
            name = name_match.group(1).decode("utf-8", "replace") if name_match else ""
            if b"filename=" in headers:
                form.fields[name] = "<file>"
                if value_end < 0:
                    break  # the file is still arriving: no field is whole past this point
            elif value_end < 0:
                break
            elif name == "model":
                form.head = buf
                form.model_at = (value_start, value_end)
                form.fields["model"] = buf[value_start:value_end].decode("utf-8", "replace")
                return form
            elif value_end - value_start <= MAX_FIELD:
                form.fields[name] = buf[value_start:value_end].decode("utf-8", "replace")
            scanned = value_end + 2
        if len(buf) > max_bytes:
            raise RequestTooLargeError(f"Request body exceeds the limit of {max_bytes} bytes.")
        if len(buf) > MAX_HEAD:
            raise InvalidRequestError(
                "The form's model field must come before its file (the openai SDKs send it "
                f"first); none was found in its first {MAX_HEAD} bytes.",
                param="model",
            )
    raise _no_model()


def _no_model() -> InvalidRequestError:
    return InvalidRequestError(
        "The form has no model field; the gateway routes by it.", param="model"
    )
