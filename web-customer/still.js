// The full-resolution still the agent asks for with capture.request.
//
// The call's video is capped at 720p (call.js scales the encoding down), so the still must not come
// from what the agent receives. Two ways to the camera's full resolution, in order:
//
// 1. ImageCapture.takePhoto() where the browser has it (Chrome, Android), asking for the largest
//    photo size the camera reports (getPhotoCapabilities). On phones this is the camera's photo
//    pipeline at sensor resolution (e.g. 4032x3024), larger than any video format.
// 2. The live video track at its native resolution: raise the track to its maximum capabilities
//    (getCapabilities().width.max / height.max) with applyConstraints, wait for a frame of that size
//    in the preview, draw it on a canvas, encode JPEG, and restore the previous constraints. This is
//    the path for browsers without ImageCapture (Safari, Firefox), and also the fallback when
//    takePhoto fails or returns LESS than the track can deliver (Chrome's fake camera answers
//    takePhoto with the current 1280x720 frame while the track goes up to 3840x2160). We raise the
//    one track rather than open a second capture of the same camera, which several phones refuse
//    while the first is open; the call's video briefly carries the bigger frames, which the sender
//    scales down under its bitrate ceiling.
//
// Whatever path, the result is a JPEG, PNG or WebP under the server's upload limit.

const UPLOAD_TYPES = new Set(["image/jpeg", "image/png", "image/webp"]);
const MAX_UPLOAD_BYTES = 14 * 1024 * 1024; // the server takes 15 MiB; keep room for the multipart frame

/**
 * Takes the still from `track`, previewed in `video`. `constraints(base)` adds the page's torch and
 * zoom to a constraint set (applyConstraints replaces the whole set). Resolves
 * {blob, width, height, via}; rejects with an Error whose `code` is `camera_unavailable` or
 * `still_failed`.
 */
export async function takeStill(track, video, constraints = (c) => c) {
  if (!track || track.readyState !== "live") throw codeError("camera_unavailable", "the camera is not running");
  const settings = track.getSettings ? track.getSettings() : {};
  const caps = track.getCapabilities ? track.getCapabilities() : {};
  const livePixels = (settings.width || 0) * (settings.height || 0);
  const maxPixels = (caps.width && caps.width.max) * (caps.height && caps.height.max) || 0;
  const wanted = Math.max(livePixels, maxPixels);

  let photo = null;
  if (typeof ImageCapture === "function") {
    try {
      const blob = await takePhoto(track);
      const size = await imageSize(blob);
      if (size) photo = { blob, ...size, via: "takePhoto" };
      if (photo && photo.width * photo.height >= wanted) return finishStill(photo);
      console.info("takePhoto gave", size, "less than the track's", caps.width && caps.width.max, caps.height && caps.height.max);
    } catch (e) {
      console.warn("takePhoto failed, using the video track", e);
    }
  }
  let frame = null;
  try {
    frame = await grabNativeFrame(track, video, constraints);
  } catch (e) {
    if (!photo) throw e;
  }
  const best = !photo || (frame && frame.width * frame.height > photo.width * photo.height) ? frame : photo;
  return finishStill(best);
}

async function takePhoto(track) {
  const ic = new ImageCapture(track);
  let settings;
  try {
    const pc = await withTimeout(ic.getPhotoCapabilities(), 2000);
    if (pc && pc.imageWidth && pc.imageWidth.max && pc.imageHeight && pc.imageHeight.max) {
      settings = { imageWidth: pc.imageWidth.max, imageHeight: pc.imageHeight.max };
    }
  } catch {
    /* take the photo at the camera's default size */
  }
  try {
    return await withTimeout(ic.takePhoto(settings), 5000);
  } catch (e) {
    if (!settings) throw e;
    return await withTimeout(new ImageCapture(track).takePhoto(), 5000);
  }
}

async function grabNativeFrame(track, video, constraints) {
  const saved = track.getConstraints ? track.getConstraints() : {};
  const caps = track.getCapabilities ? track.getCapabilities() : {};
  const cur = track.getSettings ? track.getSettings() : {};
  const maxW = caps.width && caps.width.max;
  const maxH = caps.height && caps.height.max;
  let raised = false;
  try {
    if (maxW && maxH && (maxW > (cur.width || 0) || maxH > (cur.height || 0))) {
      const before = video.videoWidth * video.videoHeight;
      try {
        await track.applyConstraints(constraints({ ...saved, width: { ideal: maxW }, height: { ideal: maxH } }));
        raised = true;
        await waitForFrame(video, (w, h) => w * h > before, 2500);
      } catch (e) {
        console.warn("could not raise the track to its native size", e);
      }
    }
    const w = video.videoWidth;
    const h = video.videoHeight;
    if (!w || !h) throw codeError("still_failed", "no video frame");
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").drawImage(video, 0, 0, w, h); // unmirrored: CSS transforms do not apply
    const blob = await toBlob(canvas, "image/jpeg", 0.92);
    return { blob, width: w, height: h, via: raised ? "track_native" : "track" };
  } finally {
    if (raised) await track.applyConstraints(constraints(saved)).catch(() => {});
  }
}

/** Resolves once two frames of the wanted size have been presented (or after timeoutMs). */
function waitForFrame(video, ok, timeoutMs) {
  return new Promise((resolve) => {
    const deadline = performance.now() + timeoutMs;
    let good = 0;
    const check = () => {
      if (ok(video.videoWidth, video.videoHeight)) good++;
      // one more frame after the size change, so the canvas gets a complete picture at that size
      if (good >= 2 || performance.now() > deadline) return resolve();
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(check);
      else setTimeout(check, 50);
    };
    check();
    setTimeout(resolve, timeoutMs + 50); // requestVideoFrameCallback does not fire while hidden
  });
}

/** A blob the server accepts: JPEG, PNG or WebP, under the upload limit; re-encoded otherwise. */
async function finishStill(still) {
  const { blob } = still;
  if (UPLOAD_TYPES.has(blob.type) && blob.size <= MAX_UPLOAD_BYTES) return still;
  const bmp = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bmp.width;
  canvas.height = bmp.height;
  canvas.getContext("2d").drawImage(bmp, 0, 0);
  if (bmp.close) bmp.close();
  const jpeg = await toBlob(canvas, "image/jpeg", 0.9);
  return { blob: jpeg, width: canvas.width, height: canvas.height, via: `${still.via}+jpeg` };
}

function toBlob(canvas, type, quality) {
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(codeError("still_failed", "could not encode the picture"))), type, quality),
  );
}

/** Width and height from a JPEG or PNG header (no full decode of a 12 MP photo); else a decode. */
export async function imageSize(blob) {
  const buf = new Uint8Array(await blob.slice(0, 256 * 1024).arrayBuffer());
  const dv = new DataView(buf.buffer);
  if (buf.length > 24 && buf[0] === 0x89 && buf[1] === 0x50 && buf[2] === 0x4e && buf[3] === 0x47) {
    return { width: dv.getUint32(16), height: dv.getUint32(20) };
  }
  if (buf.length > 4 && buf[0] === 0xff && buf[1] === 0xd8) {
    let i = 2;
    while (i + 9 < buf.length) {
      if (buf[i] !== 0xff) {
        i++;
        continue;
      }
      const marker = buf[i + 1];
      if (marker === 0xff || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
        i += marker === 0xff ? 1 : 2;
        continue;
      }
      // SOFn (not DHT c4, JPG c8, DAC cc) carries the frame size
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return { height: dv.getUint16(i + 5), width: dv.getUint16(i + 7) };
      }
      i += 2 + dv.getUint16(i + 2);
    }
  }
  try {
    const bmp = await createImageBitmap(blob);
    const size = { width: bmp.width, height: bmp.height };
    if (bmp.close) bmp.close();
    return size;
  } catch {
    return null;
  }
}

export function withTimeout(p, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(codeError("timeout", `timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

export function codeError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}
