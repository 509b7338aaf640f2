"""What both ext_proc phases share: the per-process `context`, the reply `messages` builders."""
