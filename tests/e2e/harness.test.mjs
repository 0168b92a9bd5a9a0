// Checks the test harness itself, apart from the pages: the server can be started, restarted and
// killed; Chromium's fake camera plays the generated .y4m; ImageCapture.takePhoto gives the camera's
// full resolution while the track is capped; a WebRTC loopback decodes the picture. When these fail,
// the environment is at fault, not the pages.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Server } from "./lib/server.mjs";
import { launch, makeCamera } from "./lib/browser.mjs";
import { REGIONS, colorClose } from "./lib/y4m.mjs";

test("server: start, REST, graceful restart on the same port and data dir, kill -9", async () => {
  const server = new Server({ name: "harness-server" });
  try {
    await server.start();
    const s = await server.createSession({ locale: "en" });
    assert.match(s.agent_url, new RegExp(`^${server.origin}/agent/`));
    assert.match(s.customer_url, new RegExp(`^${server.origin}/customer/`));
    const port = server.port;
    await server.restart();
    assert.equal(server.port, port);
    assert.equal((await server.request("GET", `/sessions/${s.id}`)).id, s.id, "session survives a restart");
    await server.kill();
    await server.start();
    assert.equal((await server.request("GET", `/sessions/${s.id}`)).id, s.id, "session survives kill -9");
  } finally {
    await server.dispose();
  }
});

test("chromium: the fake camera plays the y4m; takePhoto is full resolution; WebRTC loopback decodes it", async () => {
  const camera = makeCamera();
  const site = http.createServer((_q, r) => {
    r.setHeader("content-type", "text/html");
    r.end("<!doctype html><title>harness</title><video id=local autoplay muted playsinline></video><video id=remote autoplay muted playsinline></video>");
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
  const browser = await launch({ camera });
  try {
    const ctx = await browser.newContext({ permissions: ["camera", "microphone"] });
    const page = await ctx.newPage();
    await page.goto(`http://127.0.0.1:${site.address().port}/`);
    const r = await page.evaluate(async (regions) => {
      const avg = (src, w, h) => {
        const c = new OffscreenCanvas(w, h);
        const g = c.getContext("2d", { willReadFrequently: true });
        g.drawImage(src, 0, 0, w, h);
        return regions.map((rg) => {
          const d = g.getImageData(Math.floor(rg.x * w), Math.floor(rg.y * h), Math.floor(rg.w * w), Math.floor(rg.h * h)).data;
          const s = [0, 0, 0];
          for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) s[k] += d[i + k];
          return s.map((v) => Math.round(v / (d.length / 4)));
        });
      };
      const stream = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: { ideal: "environment" }, width: { ideal: 1280 }, height: { ideal: 720 } },
        audio: true,
      });
      const track = stream.getVideoTracks()[0];
      const local = document.getElementById("local");
      local.srcObject = stream;
      await local.play();
      const photo = await new ImageCapture(track).takePhoto();
      const bmp = await createImageBitmap(photo);
      const out = {
        settings: { width: track.getSettings().width, height: track.getSettings().height },
        photo: { type: photo.type, bytes: photo.size, width: bmp.width, height: bmp.height, colors: avg(bmp, bmp.width, bmp.height) },
      };
      // WebRTC loopback between two peer connections in this page.
      const a = new RTCPeerConnection();
      const b = new RTCPeerConnection();
      a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
      b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
      const remote = document.getElementById("remote");
      b.ontrack = (e) => (remote.srcObject = e.streams[0]);
      stream.getTracks().forEach((t) => a.addTrack(t, stream));
      await a.setLocalDescription();
      await b.setRemoteDescription(a.localDescription);
      await b.setLocalDescription();
      await a.setRemoteDescription(b.localDescription);
      const t0 = performance.now();
      while (!(remote.videoWidth > 0) && performance.now() - t0 < 20000) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, 1500));
      out.remote = { width: remote.videoWidth, height: remote.videoHeight, colors: remote.videoWidth ? avg(remote, remote.videoWidth, remote.videoHeight) : null };
      a.close();
      b.close();
      stream.getTracks().forEach((t) => t.stop());
      return out;
    }, REGIONS);
    console.log("# fake camera:", JSON.stringify(r));
    assert.deepEqual(r.settings, { width: 1280, height: 720 }, "the track is capped by the constraints");
    assert.equal(r.photo.width, camera.width, "takePhoto has the camera's full width");
    assert.equal(r.photo.height, camera.height, "takePhoto has the camera's full height");
    REGIONS.forEach((rg, i) =>
      assert.ok(colorClose(r.photo.colors[i], rg.color, 20), `takePhoto ${rg.name}: ${r.photo.colors[i]} vs ${rg.color}`),
    );
    assert.ok(r.remote.width > 0, "the loopback video decodes");
    REGIONS.forEach((rg, i) =>
      assert.ok(colorClose(r.remote.colors[i], rg.color, 50), `loopback ${rg.name}: ${r.remote.colors[i]} vs ${rg.color}`),
    );
  } finally {
    await browser.close();
    site.close();
    camera.dispose();
  }
});
