"""Watching a model in production: drift detection, SLO alert rules and dashboards, Grad-CAM.

``monitor`` imports no other stage but ``models`` (Grad-CAM needs the torch module). Import
the submodule you need (``resnetkit.monitor.drift``, ``.slo``, ``.explain``); this package
imports none of them, so using one does not pay for the others.
"""
