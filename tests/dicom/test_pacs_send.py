"""The whole hospital round trip: storescu -> `manage.py dicom_listener` -> worker -> the AI
results C-STOREd to a PACS (a pynetdicom Storage SCP on loopback), and a PACS that refuses."""

from __future__ import annotations

from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, generate_uid

from tests.dicom.conftest import LISTENER_AE, dcmtk
from tests.web.fixtures import dicom_bytes, wait_for
from web.clinical.dicom.pacs_send import pacs_send_run
from web.clinical.models import DicomSend, Image


def send_file(stack, tmp_path, **kwargs) -> Image:
    study_uid = generate_uid()
    path = tmp_path / "xray.dcm"
    path.write_bytes(dicom_bytes(study_uid=study_uid, **kwargs))
    sent = dcmtk(
        "storescu", "-aet", "STORESCU", "-aec", LISTENER_AE, "127.0.0.1", str(stack.listener_port), str(path)
    )
    assert sent.returncode == 0, sent.stderr + stack.listener.log()[-2000:]
    return wait_for(
        lambda: Image.objects.filter(study__study_instance_uid=study_uid).first(),
        timeout=30,
        what="the image",
    )


def final_send(stack, image: Image) -> DicomSend:
    def settled() -> DicomSend | None:
        return DicomSend.objects.filter(image=image, state__in=["sent", "failed"]).first()

    try:
        return wait_for(settled, timeout=150, what="the results' C-STORE to settle")
    except AssertionError:
        raise AssertionError(stack.worker.log()[-4000:]) from None


def test_received_images_are_analysed_and_their_results_stored_in_the_pacs(
    pacs_stack, radiologist_api, tmp_path
) -> None:
    image = send_file(pacs_stack, tmp_path, patient_id="MRN-PACS", accession="ACC-PACS", seed=11)
    send = final_send(pacs_stack, image)

    assert send.state == "sent" and send.attempts == 1, send.last_error
    received = {str(ds.SOPInstanceUID): ds for ds in pacs_stack.pacs.received}
    assert set(send.instances) <= set(received)
    mine = [received[uid] for uid in send.instances]
    classes = sorted(str(ds.SOPClassUID) for ds in mine)
    # One SR for the image, one heat-map SC per analysis that drew one.
    assert classes.count(ComprehensiveSRStorage) == 1
    assert classes.count(SecondaryCaptureImageStorage) >= 1
    for ds in mine:
        assert ds.StudyInstanceUID == image.study.study_instance_uid  # lands in the same study
        assert ds.PatientID == "MRN-PACS" and ds.AccessionNumber == "ACC-PACS"
    assert set(pacs_stack.pacs.calling) == {"RADTRIAGE"}

    shown = radiologist_api.get(f"/api/images/{image.pk}/pacs-sends/")
    assert shown.status_code == 200
    [row] = shown.json()
    assert row["state"] == "sent" and row["destination"].startswith("TESTPACS@127.0.0.1:")


def test_a_pacs_that_refuses_leaves_a_visible_failure_after_retries(
    pacs_stack, radiologist_api, tmp_path, settings, private_redis, broker_switch
) -> None:
    pacs_stack.pacs.refuse = True
    try:
        image = send_file(pacs_stack, tmp_path, patient_id="MRN-REFUSED", seed=12)
        send = final_send(pacs_stack, image)
    finally:
        pacs_stack.pacs.refuse = False

    assert send.state == "failed" and send.attempts == 3  # the first try and two retries
    assert "0xA700" in send.last_error and "Gave up after 3 attempts" in send.last_error
    [row] = radiologist_api.get(f"/api/images/{image.pk}/pacs-sends/").json()
    assert row["state"] == "failed" and "0xA700" in row["last_error"]

    # Sent again by hand once the PACS takes it: the same row, queued afresh, then sent.
    settings.RADTRIAGE_PACS_HOST, settings.RADTRIAGE_PACS_PORT = "127.0.0.1", pacs_stack.pacs.port
    settings.RADTRIAGE_PACS_AE_TITLE = "TESTPACS"
    # The job goes to a Redis no worker reads (the session's shared worker would otherwise send
    # it at the same time as the call below).
    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")
    again = radiologist_api.post(f"/api/images/{image.pk}/pacs-sends/")
    assert again.status_code == 202, again.content
    assert again.json()[0]["id"] == send.pk and again.json()[0]["state"] == "queued"
    assert again.json()[0]["last_error"] == ""
    # The task's service runs here instead (the same call the task makes).
    assert pacs_send_run(send_id=send.pk).state == "sent"
    [row] = radiologist_api.get(f"/api/images/{image.pk}/pacs-sends/").json()
    assert row["state"] == "sent" and len(row["instances"]) >= 2


def test_asking_for_a_send_without_a_pacs_configured_says_why(
    radiologist_api, settings, transactional_db
) -> None:
    from tests.web.fixtures import upload

    settings.RADTRIAGE_PACS_HOST = ""
    image_id = upload(radiologist_api, dicom_bytes()).json()["image"]["id"]
    refused = radiologist_api.post(f"/api/images/{image_id}/pacs-sends/")
    assert refused.status_code == 409 and "no PACS is configured" in refused.content.decode()
    assert radiologist_api.get(f"/api/images/{image_id}/pacs-sends/").json() == []
