"""TensorBoard videos (eva_rl/video.py): small whatever the recorded MP4's length and size."""

import imageio.v3 as iio
import numpy as np

from eva_rl.video import log_video, write_mp4


class Summaries:
    """What `log_video` gives a FileWriter."""

    def __init__(self):
        self.added = []

    def add_summary(self, summary, step):
        self.added.append((summary, step))


def test_a_long_wide_video_is_thinned_to_100_frames_and_shrunk_to_size(tmp_path):
    """150 frames keep every second one (75, not all 150), and 240 pixels shrink to 160 wide
    (no whole pixel stride makes 160 of 240: the old `240 // 160` stride of 1 kept all)."""
    ramp = np.linspace(0, 255, 240, dtype=np.uint8)
    frames = [
        np.broadcast_to(np.roll(ramp, 3 * i)[None, :, None], (120, 240, 3)) for i in range(150)
    ]
    write_mp4(tmp_path / "v.mp4", frames, fps=30)
    writer = Summaries()
    log_video(writer, "video/x", tmp_path / "v.mp4", step=7)
    [(summary, step)] = writer.added
    image = summary.value[0].image
    gif = iio.imread(image.encoded_image_string, index=None, extension=".gif")
    assert (len(gif), image.width, image.height) == (75, 160, 80)
    assert gif.shape[1:3] == (80, 160) and step == 7 and summary.value[0].tag == "video/x"
