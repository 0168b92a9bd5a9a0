// Scenario 2: the phone cannot deliver its still (its uploads are cut at the network level), so the
// agent's console grabs the frame from the video and uploads it as `agent_frame`.
//
// Chromium's fake camera can be told to fail takePhoto (--use-fake-device-for-media-stream=
// config=TakePhotoFails), but only its generated "pacman" device, not a file-backed one, and a
// failing takePhoto sends the customer page to its own canvas fallback (a customer_still), not to
// the agent's frame grab. So this scenario aborts the customer's POST .../captures instead; the
// third test below covers the TakePhotoFails device.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Scenario, startCameraIfAsked } from "./lib/scenario.mjs";
import { waitFor, sleep, waitVideoPlaying, videoFrames, waitConnState } from "./lib/browser.mjs";
import { assertVideoShowsCamera, assertImageShowsCamera, waitCaptureItems, pick } from "./lib/checks.mjs";

const CAPTURES_POST = /\/api\/v1\/sessions\/[^/]+\/captures(\?|$)/;

test("scenario 2: the customer's still cannot be uploaded -> the agent grabs the frame (agent_frame)", { timeout: 240_000 }, async (t) => {
  const sc = new Scenario("2-fallback");
  let session;
  let agent;
  let customer;
  const blocked = [];
  const seenSizes = new Set();
  let sampling = false;

  try {
    await sc.start();

    await sc.step(t, "create a session; agent and customer join", async () => {
      session = await sc.server.createSession({
        claim_ref: "CLM-E2E-0002",
        locale: "en",
        vehicle: { plate: "京B54321" },
        checklist: [{ area: "door_front_left", angle: "close_up" }],
      });
      agent = await sc.open("agent", null);
      customer = await sc.open("customer", null, { phone: true });
      // As in real use: the agent's console is up and waiting when the customer opens the link.
      await agent.page.goto(session.agent_url);
      await waitConnState(agent, "open");
      await customer.page.goto(session.customer_url);
      await startCameraIfAsked(customer);
      await waitConnState(customer, "open");
    });

    await sc.step(t, "the call is up: the agent's remote-video decodes the camera", async () => {
      await waitVideoPlaying(agent, "remote-video", { timeout: 45_000 });
      await assertVideoShowsCamera(agent, "remote-video");
      await sc.snap("call-connected");
    });

    await sc.step(t, "the customer's still uploads are cut (POST .../captures aborted)", async () => {
      // Only now, so that request interception does not change how the pages load and join.
      await customer.context.route(CAPTURES_POST, (route) => {
        if (route.request().method() === "POST") {
          blocked.push(new Date().toISOString());
          return route.abort("failed");
        }
        return route.continue();
      });
    });

    await sc.step(t, "the agent captures; the console grabs the frame and lists it within 40 s", async () => {
      await pick(agent, "area-select", "door_front_left");
      await pick(agent, "angle-select", "close_up");
      sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const f = await videoFrames(agent.page, "remote-video", 50).catch(() => null);
          if (f && f.width) seenSizes.add(`${f.width}x${f.height}`);
          await sleep(50);
        }
      })();
      await agent.page.getByTestId("capture-button").first().click();
      await sleep(1000);
      await sc.snap("capture-pending");
      try {
        await waitCaptureItems(agent, 1, 40_000);
      } finally {
        sampling = false;
        await sampler;
      }
      t.diagnostic(`customer uploads blocked: ${blocked.length}; agent video sizes seen: ${[...seenSizes].join(", ")}`);
      t.diagnostic(`capture.failed received by the agent: ${JSON.stringify(agent.received("capture.failed"))}; sent by the customer: ${JSON.stringify(customer.sent("capture.failed"))}`);
      await sc.snap("fallback-captured");
      assert.ok(blocked.length >= 1, "the customer page tried to upload its still (and was blocked)");
    });

    await sc.step(t, "the stored capture is an agent_frame at the agent-received resolution, the camera's picture", async () => {
      const { items } = await sc.server.request("GET", `/sessions/${session.id}/captures`);
      assert.equal(items.length, 1, `one capture: ${JSON.stringify(items.map((c) => c.source))}`);
      const c = items[0];
      t.diagnostic(`capture: ${c.source} ${c.mime} ${c.width}x${c.height} request_id=${c.request_id}`);
      assert.equal(c.source, "agent_frame");
      assert.equal(c.area, "door_front_left");
      assert.equal(c.angle, "close_up");
      assert.ok(c.width <= 1280 && c.height <= 720, `the frame is what the call carries (<= 1280x720): ${c.width}x${c.height}`);
      assert.ok(
        seenSizes.has(`${c.width}x${c.height}`),
        `the frame's size ${c.width}x${c.height} is a size the agent's remote-video had (${[...seenSizes].join(", ")})`,
      );
      const img = await sc.server.bytes(c.image_url);
      sc.saveImage("stored-agent-frame", img.body, c.mime);
      await assertImageShowsCamera(sc.browser, img.body, c.mime, 60);
    });

    await sc.step(
      t,
      "the agent's capture-item is marked as a frame grab",
      async () => {
        const item = agent.page.locator('[data-testid="capture-list"] [data-testid="capture-item"]').first();
        const info = await item.evaluate((el) => ({
          attrs: [el, ...el.querySelectorAll("*")].flatMap((e) => [...e.attributes].map((a) => a.value)).join(" "),
          text: el.innerText,
        }));
        assert.ok(
          /agent_frame|agent-frame/.test(info.attrs) || /frame|video|agent/i.test(info.text),
          `capture-item marks the source: ${JSON.stringify(info).slice(0, 400)}`,
        );
      },
      { soft: true },
    );

    await sc.step(
      t,
      "the customer's page lists the capture too",
      async () => {
        await waitCaptureItems(customer, 1, 10_000);
        await sc.snap("customer-list");
      },
      { soft: true },
    );
  } finally {
    sampling = false;
    await sc.dispose();
  }
});

test("scenario 2b: takePhoto fails on the phone (fake device TakePhotoFails) -> the customer page still delivers a still", { timeout: 180_000 }, async (t) => {
  // The generated "pacman" camera (no y4m): it can fail takePhoto on purpose.
  const sc = new Scenario("2b-takephoto-fails", { camera: false, fakeDeviceConfig: "config=TakePhotoFails" });
  let session;
  let agent;
  let customer;
  try {
    await sc.start();
    await sc.step(t, "join and call", async () => {
      session = await sc.server.createSession({ claim_ref: "CLM-E2E-0003", locale: "en", checklist: [{ area: "hood", angle: "close_up" }] });
      agent = await sc.open("agent", session.agent_url);
      await waitConnState(agent, "open");
      customer = await sc.open("customer", session.customer_url, { phone: true });
      await startCameraIfAsked(customer);
      await waitConnState(customer, "open");
      await waitVideoPlaying(agent, "remote-video", { timeout: 45_000 });
    });
    let agentVideo;
    await sc.step(t, "capture: a customer_still arrives although takePhoto fails", async () => {
      await pick(agent, "area-select", "hood");
      await pick(agent, "angle-select", "close_up");
      const f = await videoFrames(agent.page, "remote-video", 100);
      agentVideo = { width: f.width, height: f.height };
      await agent.page.getByTestId("capture-button").first().click();
      await waitCaptureItems(agent, 1, 30_000);
      await sc.snap("captured");
      const { items } = await sc.server.request("GET", `/sessions/${session.id}/captures`);
      assert.equal(items.length, 1);
      const c = items[0];
      t.diagnostic(`capture: ${c.source} ${c.mime} ${c.width}x${c.height}; agent video ${agentVideo.width}x${agentVideo.height}`);
      assert.equal(c.source, "customer_still", "the phone's own fallback (its video track via canvas), not the agent's grab");
      assert.ok(
        c.width >= agentVideo.width && c.height >= agentVideo.height,
        `the still (${c.width}x${c.height}) is at least what the agent receives (${agentVideo.width}x${agentVideo.height})`,
      );
    });
  } finally {
    await sc.dispose();
  }
});
