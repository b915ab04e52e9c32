"""sampleapp: deploykit's example web app (WSGI, PostgreSQL, Redis).

Served by gunicorn (``gunicorn -c gunicorn.conf.py sampleapp.web:application``
in a release directory); see examples/app/README.md.
"""
