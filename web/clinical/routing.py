from django.urls import path, re_path

from web.clinical.consumers import LiveConsumer, UnknownPathConsumer

websocket_urlpatterns = [
    path("ws/worklist/", LiveConsumer.as_asgi()),
    path("ws/studies/<int:study_id>/", LiveConsumer.as_asgi()),
    path("ws/batches/<int:batch_id>/", LiveConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),  # last: every other path is refused
]
