"""Notebooks: the ``%%sandbox`` magics, the in-container interpreter and the widgets."""
