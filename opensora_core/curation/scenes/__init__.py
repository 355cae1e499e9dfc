"""The scene cutter of step 2, `scene_clips` / `opensora data scene-clips`: detect scenes
with PySceneDetect's adaptive detector and cut them into clips, in one decoding pass.

Each decoded frame goes to the detector (downscaled, as PySceneDetect itself does) and,
once the detector can no longer put a cut before it (it decides `event_buffer_length`
frames late), to the encoder of the clip it belongs to. Clips are re-encoded (codec
from `clips.codec`) so cuts are frame-accurate: a clip holds exactly the frames of its
scene piece. Encoding runs on a background thread (the codecs release the GIL), so it
overlaps with decoding and detection.

Where it is exact (`clips.stream_copy`), a piece is copied instead of encoded, which
costs no encoding and loses nothing:

- mp4/mov sources (`COPY_FORMATS`): a piece that starts on a keyframe (there a clean
  random-access point) and whose frames are one unbroken run of packets, which is what
  encoders write at scene cuts, is copied into an mp4. A piece that turns out not to be
  one run (a B-frame across its end) is encoded from its frames, kept while they fit in
  `COPY_BUFFER_BYTES`, else decoded again from its keyframe.
- AVI sources (`POSITION_FORMATS`): the n-th packet carries the n-th frame, but
  keyframe flags and timestamps cannot be trusted. A piece starting on a flagged packet
  is copied by position into an AVI and decoded on the encoder thread; it is kept only
  when it gives the piece's frames again (same count, same `frame_signature` for each),
  else decoded again from the source and encoded, and nothing more is copied from it.

Scenes longer than `max_frames` are split into
consecutive pieces; a piece shorter than `min_frames` is dropped (and recorded) before
any encoding is spent on it.

A video with a display matrix (phone footage: coded sideways, shown turned; or
mirrored), with non-square pixels (DVD, DV and HDV footage: 720x480 shown 854x480) or
interlaced (DV, broadcast 1080i) is cut as a player shows it: each frame is
deinterlaced, resampled to square pixels and laid out by the matrix before detection,
scoring and encoding, and nothing is copied from it (a copy holds the coded frames and
the tags, which training's decoding does not apply).

Packets that fail to decode are skipped (:class:`FrameDecoder`): the frames lost are a
hard boundary, like a cut, so no clip holds frames from both sides of the damage and
each clip's frames are consecutive source frames. Nothing is copied from a video past
its first damage.

Given a :class:`Sampler`, the cutter also keeps each frame's luma (about
`Sampler.size` px at most) until its piece ends, then hands the frames at the sampler's
positions to `Sampler.take`: the weights-free scorers score a clip without decoding it
again. Memory is bounded by `min_frames` plus the detector's delay and the encoder's
queue in full frames, `COPY_BUFFER_BYTES` of frames of a piece to copy, plus
`max_frames` small luma frames with a sampler, whatever the video length.

The cutter is split by mechanism: :mod:`.detection` (the detector and the frames it
sees), :mod:`.encoding` (clips re-encoded on a background thread), :mod:`.stream_copy`
(pieces copied from the source's packets) and :mod:`.cutter` (:func:`~.cutter.cut_scenes`:
the decoding pass, and the routing of frames into scene pieces).
"""
