"""Managers' server side: the server process, the types it serves, SharedMemoryManager.

``managers.py`` is the public client side (managers, proxies); the modules here run in the
manager's server process or define what it serves.
"""
