"""gunicorn settings for sampleapp; PORT comes from .env or the environment.

Run in the release directory:
``venv/bin/gunicorn -c gunicorn.conf.py sampleapp.web:application``.
"""

from sampleapp.config import load_settings

bind = f"0.0.0.0:{load_settings().port}"
worker_class = "gthread"
workers = 2
threads = 4
# Import the app in the master: a version that cannot start (v5-crash) exits
# at once instead of booting workers that fail one by one.
preload_app = True
timeout = 30
graceful_timeout = 10
accesslog = "-"
errorlog = "-"
control_socket_disable = True  # blue and green run as one user: no shared ~/.gunicorn/gunicorn.ctl
