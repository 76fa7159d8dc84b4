from django.contrib.auth import views as auth_views
from django.urls import path

from web.ui import monitoring_views, views

app_name = "ui"

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="ui/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.worklist, name="worklist"),
    path("studies/<int:study_id>/", views.study_page, name="study"),
    path("studies/<int:study_id>/report/", views.report_page, name="report"),
    path("analyses/<int:analysis_id>/card/", views.analysis_card, name="analysis-card"),
    path("models/<str:model_id>/card/", views.model_card_page, name="model-card"),
    path("models/<str:model_id>/card/<str:name>", views.model_card_figure_file, name="model-card-figure"),
    path("batches/", views.batches_page, name="batches"),
    path("batches/<int:batch_id>/", views.batch_page, name="batch"),
    path("monitoring/", monitoring_views.monitoring, name="monitoring"),
    path("monitoring/weekly.csv", monitoring_views.monitoring_csv, name="monitoring-csv"),
    path("monitoring/weekly.pdf", monitoring_views.monitoring_pdf, name="monitoring-pdf"),
]
