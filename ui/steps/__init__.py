"""The toolbar's step dialogs: fields built from the step contracts (fields.py), the job they run (job_dialog.py)."""
