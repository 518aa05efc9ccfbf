"""`hrlxf analyze`: a read-only Dash web app over a data root (collections, evaluations, audits, training).

`data` reads the files (lazily, with polars) and returns plain frames; `views` draw them; `app` routes.
"""
