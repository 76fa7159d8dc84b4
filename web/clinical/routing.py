from django.urls import path

from web.clinical.consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/worklist/", LiveConsumer.as_asgi()),
    path("ws/studies/<int:study_id>/", LiveConsumer.as_asgi()),
]
