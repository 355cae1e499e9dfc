"""Diffusion: the IDDPM process and its training loss, SpeeDiT timestep sampling,
samplers (IDDPM respaced, DPM-Solver++), classifier-free guidance and training masks."""
