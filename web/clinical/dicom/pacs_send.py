"""C-STORE of the AI results to the configured PACS node (RADTRIAGE_PACS_HOST/PORT/AE_TITLE).

An image is queued once all its analyses are done; the worker's `pacs_send` task runs
`pacs_send_run`, retrying with backoff, and `pacs_send_fail` records the last error when it
gives up. The row (DicomSend) is what the API shows: queued, sent or failed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydicom.dataset import Dataset

from web.clinical.dispatch import TASK_PACS_SEND, job_send
from web.clinical.models import Analysis, DicomSend, Image

log = logging.getLogger(__name__)

STORE_OK = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the warnings that still store


class PacsSendError(Exception):
    """This attempt failed (no association, a failure status): worth another try."""


def pacs_sends_queue(*, image_ids: Sequence[int]) -> list[DicomSend]:
    """Queue the results of each image whose analyses are all done (at least one succeeded)
    for the configured PACS; nothing when none is configured. A re-queue replaces the results
    already sent (same instance UIDs where nothing changed). Called in the transaction that
    stores an image's results, the send row commits with them."""
    if not settings.RADTRIAGE_PACS_HOST:
        return []
    busy = Analysis.objects.filter(state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING])
    ready = (
        Image.objects.filter(pk__in=image_ids, analyses__state=Analysis.State.SUCCEEDED)
        .exclude(pk__in=busy.values("image_id"))
        .distinct()
    )
    sends = []
    with transaction.atomic():
        # The images locked first: of two jobs storing an image's last results at once, the
        # second waits for the first to commit and then sees every analysis done, so the last
        # one to commit queues the send (neither would, each seeing the other still running).
        list(
            Image.objects.select_for_update(no_key=True).filter(pk__in=image_ids).order_by("pk").values("pk")
        )
        for image in ready:
            send, _ = DicomSend.objects.update_or_create(
                image=image,
                host=settings.RADTRIAGE_PACS_HOST,
                port=settings.RADTRIAGE_PACS_PORT,
                ae_title=settings.RADTRIAGE_PACS_AE_TITLE,
                defaults={"state": DicomSend.State.QUEUED, "attempts": 0, "last_error": ""},
            )
            sends.append(send)
        ids = [s.pk for s in sends]
        transaction.on_commit(lambda: pacs_sends_dispatch(send_ids=ids))
    return sends


def pacs_sends_dispatch(*, send_ids: Sequence[int]) -> None:
    """Send the jobs (after commit). A send the broker never got stays queued, and the
    recovery sweep (analysis/recovery.py) sends it again."""
    for send_id in send_ids:
        try:
            job_send(TASK_PACS_SEND, args=[send_id], queue=settings.QUEUE_MAINTENANCE)
        except Exception:  # noqa: BLE001 - the row stays queued, visible as such
            log.error("Could not enqueue PACS send %s", send_id, exc_info=True)


def pacs_send_run(*, send_id: int) -> DicomSend:
    """One attempt: the image's SR and its heat-map SCs in one association. Raises
    PacsSendError (after recording it on the row) when the PACS did not take them all."""
    send = DicomSend.objects.select_related("image__study__patient").get(pk=send_id)
    if send.state == DicomSend.State.SENT:
        return send  # a redelivered job: already done
    send.attempts += 1
    try:
        datasets = results_datasets(send.image)
        _store(datasets, host=send.host, port=send.port, called=send.ae_title)
    except PacsSendError as exc:
        send.last_error = str(exc)
        send.save(update_fields=["attempts", "last_error", "updated_at"])
        raise
    send.state = DicomSend.State.SENT
    send.last_error = ""
    send.sent_at = timezone.now()
    send.instances = [str(ds.SOPInstanceUID) for ds in datasets]
    send.save(update_fields=["state", "attempts", "last_error", "sent_at", "instances", "updated_at"])
    return send


def pacs_send_fail(*, send_id: int, message: str) -> None:
    DicomSend.objects.filter(pk=send_id).exclude(state=DicomSend.State.SENT).update(
        state=DicomSend.State.FAILED, last_error=message, updated_at=timezone.now()
    )


def results_datasets(image: Image) -> list[Dataset]:
    from web.clinical.analysis.findings import current_results
    from web.clinical.reporting.dicom_sc import analysis_secondary_capture
    from web.clinical.reporting.dicom_sr import image_structured_report

    out = [image_structured_report(image=image)]
    # The heat maps of the results the SR reports (the current one per condition), no others.
    for analysis in current_results(image.analyses.filter(state=Analysis.State.SUCCEEDED)):
        if analysis.heatmap_raw:
            out.append(analysis_secondary_capture(analysis=analysis))
    return out


def _store(datasets: list[Dataset], *, host: str, port: int, called: str) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=settings.RADTRIAGE_DICOM_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise PacsSendError(f"The PACS {called}@{host}:{port} {why}.")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = status.get("Status") if status else None
            if code not in STORE_OK:
                what = f"status 0x{code:04X}" if code is not None else "no answer"
                raise PacsSendError(
                    f"The PACS {called}@{host}:{port} did not store {ds.SOPInstanceUID}: {what}."
                )
    finally:
        assoc.release()
