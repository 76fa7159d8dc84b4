"""The DICOM Storage SCP: accepts CR, DX and Secondary Capture radiographs over C-STORE,
answers C-ECHO, and files each instance through the upload service before it answers.

Each association's new analyses are sent to the workers in mini-batches (every
RADTRIAGE_DICOM_BATCH_SIZE instances and when the association ends), so a study sent as one
association is analysed together. Everything stored is committed before its C-STORE response:
a listener that dies mid-association loses nothing (the sweeper sends what was not sent).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connections
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from web.clinical.analysis.jobs import analyses_dispatch
from web.clinical.dicom.ingest import CANNOT_UNDERSTAND, DATASET_MISMATCH, dicom_instance_store

log = logging.getLogger(__name__)
# pynetdicom logs the query data sets of C-FIND/C-GET/C-MOVE (patient names, IDs): never here.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
# pynetdicom accepts the first of these that the sender proposes, whatever the sender's order.
# Compressed first: a sender proposes a compressed syntax mostly when its file is stored so,
# and may offer to convert it but then fail to (dcmtk's storescu does, for JPEG and JPEG 2000).
# Lossless before lossy, uncompressed last.
TRANSFER_SYNTAXES = [
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    RLELossless,
    JPEG2000,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
]


@dataclass
class _Pending:
    """New analyses of one association not yet sent, and how many instances it stored."""

    ids: dict[str, list[int]] = field(default_factory=dict)
    instances: int = 0
    stored: int = 0
    refused: int = 0


class StorageSCP:
    """One listener; `start` binds and serves in background threads until `stop`. It answers
    only associations addressed to `ae_title` or one of `called_titles`."""

    def __init__(
        self,
        *,
        ae_title: str,
        allowed_calling: Sequence[str] = (),
        batch_size: int | None = None,
        called_titles: Sequence[str] = (),
    ) -> None:
        self.ae = AE(ae_title=ae_title)
        self.called_titles = {ae_title.strip(), *(t.strip() for t in called_titles)}
        # Any other called AE title is rejected at association (A-ASSOCIATE-RJ, reason 7);
        # _on_requested answers under the title that was called when it is one of ours.
        self.ae.require_called_aet = True
        self.ae.maximum_pdu_size = 0  # no limit: whole radiographs in few PDUs
        self.ae.dimse_timeout = self.ae.network_timeout = 120
        for sop_class in STORAGE_CLASSES:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        # Anything not on the list is rejected at association (A-ASSOCIATE-RJ, reason 3).
        self.ae.require_calling_aet = list(allowed_calling)
        self.batch_size = batch_size or settings.RADTRIAGE_DICOM_BATCH_SIZE
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self.server: Any = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            # A dropped connection (no release, no abort) still sends what it stored.
            (evt.EVT_CONN_CLOSE, lambda event: self._send(event.assoc, final=True)),
        ]
        self.server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)
        bound = self.server.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ received, before negotiation: accept under the called title when it
        is one of ours (pynetdicom compares it with the acceptor's title); else say why."""
        assoc = event.assoc
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        if called in self.called_titles:
            assoc.acceptor.ae_title = called
        else:
            log.warning(
                "Rejected an association from %s (%s): called AE title %r is not this listener's (%s)",
                assoc.requestor.primitive.calling_ae_title,
                assoc.requestor.address,
                called,
                ", ".join(sorted(self.called_titles)),
            )

    def _on_store(self, event: Any) -> Dataset:
        assoc = event.assoc
        context = event.context
        calling = assoc.requestor.ae_title
        sop_uid = event.request.AffectedSOPInstanceUID
        if event.request.AffectedSOPClassUID != context.abstract_syntax:
            return _status(DATASET_MISMATCH, "The SOP Class differs from the negotiated one.")
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - whatever could not be read is refused
            return _status(CANNOT_UNDERSTAND, f"Unreadable data set: {exc}")
        stored = dicom_instance_store(
            data=data, filename=f"{calling}-{sop_uid}.dcm", ip_address=assoc.requestor.address
        )
        with self._lock:
            pending = self._pending.setdefault(id(assoc), _Pending())
            pending.instances += 1
            pending.stored += stored.status == 0
            pending.refused += stored.status != 0
            for condition, ids in stored.analysis_ids.items():
                pending.ids.setdefault(condition, []).extend(ids)
            ready = pending.instances % self.batch_size == 0
        if ready:
            self._send(assoc)
        if stored.status:
            # Not the reason: it may name the patient (a wrong-patient clash); the sender has it.
            log.warning("Refused %s from %s: status 0x%04X", sop_uid, calling, stored.status)
        return _status(stored.status, stored.comment)

    def _on_end(self, event: Any) -> None:
        self._send(event.assoc, final=True)
        connections.close_all()  # this association's thread is about to end

    def _send(self, assoc: Any, *, final: bool = False) -> None:
        with self._lock:
            pending = self._pending.pop(id(assoc), None) if final else self._pending.get(id(assoc))
            ids: dict[str, list[int]] = pending.ids if pending else {}
            if pending is not None:
                pending.ids = {}
        for condition_ids in ids.values():
            analyses_dispatch(analysis_ids=condition_ids, queue=settings.QUEUE_BATCH)
        if final and pending is not None:
            log.info(
                "Association from %s ended: %d instances, %d stored, %d refused",
                assoc.requestor.ae_title,
                pending.instances,
                pending.stored,
                pending.refused,
            )


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if code and comment:
        status.ErrorComment = error_comment(comment)
    return status


def error_comment(text: str) -> str:
    """A reason as an Error Comment (LO): at most 64 characters of the default repertoire and
    no backslash (LO's value separator). A longer one is cut at a word and ends with '...', so
    the sender's log never shows half a word."""
    text = " ".join(text.split()).encode("ascii", "replace").decode().replace("\\", "/")
    if len(text) <= 64:
        return text
    return text[:61].rsplit(" ", 1)[0].rstrip(" ,;:(-") + "..."
