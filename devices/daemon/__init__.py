"""The camera-loop inference daemon (``edgesight run``): capture, motion gate, detector, tracker,
events and sinks, with metrics, health and a durable spool. Imports no torch and nothing from
``toolkit``, ``models`` or ``calibration``.
"""
