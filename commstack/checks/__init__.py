"""Checks of a deployed stack from outside: doctor, its MatrixRTC call rows and the RTC probe they join LiveKit with."""
