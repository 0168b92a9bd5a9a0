// Scenario 1: the guided capture call, end to end, through the real binary and two real pages in
// headless Chromium; the customer's phone camera is a generated .y4m at 1920x1080.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Scenario, startCameraIfAsked, endButton, confirmInPageDialog } from "./lib/scenario.mjs";
import {
  waitFor,
  sleep,
  waitVideoPlaying,
  videoFrames,
  waitConnState,
  connState,
  captureCount,
} from "./lib/browser.mjs";
import {
  assertVideoShowsCamera,
  assertImageShowsCamera,
  waitCaptureItems,
  waitChecklistDone,
  checklistState,
  guideOverlayState,
  pick,
  videoContentRect,
  guideBoxRect,
  boxOnScreen,
  rectsClose,
} from "./lib/checks.mjs";

const CHECKLIST = [
  { area: "front_bumper", angle: "close_up", label: "Front bumper, the dent" },
  { area: "overview", angle: "front_left_45" },
];

/** The id of the video track the agent's remote-video shows (changes when the call is re-established). */
function remoteTrackId(agent) {
  return agent.page.evaluate(() => {
    const el = document.querySelector('[data-testid="remote-video"]');
    const v = el && (el.tagName === "VIDEO" ? el : el.querySelector("video"));
    const s = v && v.srcObject;
    return s && s.getVideoTracks ? s.getVideoTracks().map((t) => `${t.id}:${t.readyState}`).join(",") : null;
  });
}

/** Drags a box over the agent's remote-video, from and to fractions of the element. */
async function drawBox(agent, [fx0, fy0], [fx1, fy1]) {
  const b = await agent.page.getByTestId("remote-video").first().boundingBox();
  const at = (fx, fy) => [b.x + fx * b.width, b.y + fy * b.height];
  await agent.page.mouse.move(...at(fx0, fy0));
  await agent.page.mouse.down();
  await agent.page.mouse.move(...at((fx0 + fx1) / 2, (fy0 + fy1) / 2), { steps: 5 });
  await agent.page.mouse.move(...at(fx1, fy1), { steps: 5 });
  await agent.page.mouse.up();
}

/**
 * What the agent's console shows as the current guide (its guide-box, its pressed hint button) is
 * what the customer's guide-overlay shows.
 */
async function guideConsistent(t, agent, customer, timeout = 5_000) {
  const agentBox = await agent.page.getByTestId("guide-box").first().isVisible().catch(() => false);
  const hint = await agent.page
    .locator('[data-testid^="guide-hint-"][aria-pressed="true"]')
    .first()
    .getAttribute("data-testid", { timeout: 500 })
    .then((id) => id.replace("guide-hint-", ""))
    .catch(() => null);
  t.diagnostic(`agent console shows: guide box ${agentBox}, hint ${hint}`);
  if (!agentBox && !hint) return;
  let last;
  await waitFor(
    async () => {
      last = await guideOverlayState(customer);
      return (
        last.found &&
        last.visible &&
        (!agentBox || last.boxes.length > 0 || last.painted > 0) &&
        (!hint || last.text.length > 0)
      );
    },
    { timeout, message: `the customer's guide-overlay to show what the agent's console shows (box ${agentBox}, hint ${hint})` },
  ).catch((e) => {
    throw new Error(`${e.message}\n  customer guide-overlay: ${JSON.stringify(last)}`);
  });
}

test("scenario 1: guided capture call (join, video, guide, capture, reload, restart, end)", { timeout: 360_000 }, async (t) => {
  const sc = new Scenario("1-call");
  let session;
  let agent;
  let customer;
  let agentVideo; // what the agent receives: {width, height}
  const api = (method, p, body) => sc.server.request(method, p, body);
  const captures = async () => (await api("GET", `/sessions/${session.id}/captures`)).items;

  try {
    await sc.start();

    await sc.step(t, "create a session over REST (API key)", async () => {
      session = await sc.server.createSession({
        claim_ref: "CLM-E2E-0001",
        locale: "en",
        vehicle: { plate: "沪A12345", make: "VW", model: "Lavida", color: "white" },
        customer: { name: "Wang Fang" },
        checklist: CHECKLIST,
      });
      assert.ok(session.agent_url && session.customer_url, "agent_url and customer_url");
      assert.equal(session.checklist.length, 2);
    });

    await sc.step(t, "agent and customer open their links and connect", async () => {
      // As in real use: the agent's console is up and waiting when the customer opens the link.
      agent = await sc.open("agent", session.agent_url);
      await waitConnState(agent, "open");
      customer = await sc.open("customer", session.customer_url, { phone: true });
      await sc.snap("opened");
      await startCameraIfAsked(customer);
      await waitConnState(customer, "open");
    });

    await sc.step(t, "the customer's camera preview plays", async () => {
      const s = await waitVideoPlaying(customer, "local-video", { timeout: 20_000 });
      t.diagnostic(`customer local-video ${s.width}x${s.height}`);
    });

    await sc.step(t, "the agent's remote-video decodes the customer's camera (the same picture)", async () => {
      const s = await waitVideoPlaying(agent, "remote-video", { timeout: 45_000 });
      const sample = await assertVideoShowsCamera(agent, "remote-video");
      agentVideo = { width: sample.width, height: sample.height };
      t.diagnostic(`agent receives ${s.width}x${s.height}`);
      assert.ok(agentVideo.width <= 1280 && agentVideo.height <= 720, `the call is capped at 1280x720, got ${agentVideo.width}x${agentVideo.height}`);
      await sc.snap("call-connected");
    });

    const checklistBefore = { agent: await checklistState(agent).catch(() => null), customer: await checklistState(customer).catch(() => null) };

    await sc.step(
      t,
      "a guide box drawn by the agent and the hint 'closer' appear over the customer's preview",
      async () => {
        const video = agent.page.getByTestId("remote-video").first();
        const b = await video.boundingBox();
        assert.ok(b && b.width > 50 && b.height > 50, `remote-video on screen: ${JSON.stringify(b)}`);
        const at = (fx, fy) => [b.x + fx * b.width, b.y + fy * b.height];
        const [x0, y0] = at(0.3, 0.3);
        const [x1, y1] = at(0.7, 0.75);
        const agentVideoRect = await videoContentRect(agent, "remote-video");
        await agent.page.mouse.move(x0, y0);
        await agent.page.mouse.down();
        await agent.page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, { steps: 5 });
        await agent.page.mouse.move(x1, y1, { steps: 5 });
        await agent.page.mouse.up();
        await agent.page.getByTestId("guide-hint-closer").first().click();

        // What the agent sent: the box, as fractions of the video's picture (not of its element).
        const sentBox = await waitFor(() => agent.sent("guide").map((m) => m.box).filter(Boolean).pop(), {
          timeout: 5_000,
          message: "the agent to send a guide message with a box",
        });
        const c = agentVideoRect.content;
        const clamp = (v) => Math.min(1, Math.max(0, v));
        const expected = {
          x: clamp((x0 - c.left) / c.width),
          y: clamp((y0 - c.top) / c.height),
          w: clamp((x1 - c.left) / c.width) - clamp((x0 - c.left) / c.width),
          h: clamp((y1 - c.top) / c.height) - clamp((y0 - c.top) / c.height),
        };
        t.diagnostic(`agent drew ${JSON.stringify(expected)} of the picture; sent ${JSON.stringify(sentBox)}`);
        for (const k of ["x", "y", "w", "h"]) {
          assert.ok(Math.abs(sentBox[k] - expected[k]) <= 0.02, `guide.box.${k}: sent ${sentBox[k]}, drawn ${expected[k].toFixed(3)} (agent video ${JSON.stringify(agentVideoRect)})`);
        }
        assert.ok(agent.sent("guide").some((m) => m.hint === "closer"), "the agent sent the hint 'closer'");

        let last;
        await waitFor(
          async () => {
            last = await guideOverlayState(customer);
            return last.found && last.visible && (last.boxes.length > 0 || last.painted > 0) && /closer/i.test(last.text);
          },
          { timeout: 10_000, message: "the customer's guide-overlay to show a box and the 'closer' hint" },
        ).catch((e) => {
          throw new Error(`${e.message}\n  guide-overlay: ${JSON.stringify(last)}`);
        });
        t.diagnostic(`guide-overlay: ${JSON.stringify(last)}`);

        // Where the box is on the phone: over the same part of the picture as the agent marked.
        const cv = await videoContentRect(customer, "local-video");
        const shown = await guideBoxRect(customer);
        if (shown) {
          const full = boxOnScreen(sentBox, cv.content);
          const clipped = boxOnScreen(sentBox, cv.content, cv.element);
          const tol = 4 + 2 * shown.borderWidth;
          t.diagnostic(`customer preview ${JSON.stringify(cv)}; guide-box ${JSON.stringify(shown)}; expected ${JSON.stringify(clipped)} (clipped) or ${JSON.stringify(full)}`);
          assert.ok(
            rectsClose(shown, clipped, tol) || rectsClose(shown, full, tol),
            `the guide-box on the phone (${JSON.stringify(shown)}) covers the marked part of the picture: ${JSON.stringify(clipped)} (clipped to the preview) or ${JSON.stringify(full)}`,
          );
        } else {
          t.diagnostic("no [data-testid=guide-box] element in the overlay: its position is not checked");
        }
        await sc.snap("guide-box-and-hint");
      },
      { soft: true },
    );

    await sc.step(t, "the agent captures: both pages list the capture within 15 s", async () => {
      await pick(agent, "area-select", CHECKLIST[0].area);
      await pick(agent, "angle-select", CHECKLIST[0].angle);
      const before = await videoFrames(agent.page, "remote-video", 100);
      agentVideo = { width: before.width, height: before.height };
      await agent.page.getByTestId("capture-button").first().click();
      await sleep(400);
      await sc.snap("capture-pending");
      await waitCaptureItems(agent, 1, 15_000);
      await waitCaptureItems(customer, 1, 15_000);
      await sc.snap("captured");
    });

    await sc.step(
      t,
      "the customer sees the capture-toast",
      async () => {
        await customer.page.getByTestId("capture-toast").first().waitFor({ state: "visible", timeout: 5_000 });
      },
      { soft: true },
    );

    await sc.step(t, "the stored still has the camera's full resolution and picture (REST)", async () => {
      const items = await waitFor(async () => {
        const it = await captures();
        return it.length >= 1 ? it : false;
      }, { timeout: 5_000, message: "a capture via REST" });
      assert.equal(items.length, 1, "exactly one capture");
      const c = items[0];
      t.diagnostic(`capture: ${c.source} ${c.mime} ${c.width}x${c.height} ${c.bytes} B, quality ${JSON.stringify(c.quality)}; agent video ${agentVideo.width}x${agentVideo.height}`);
      assert.equal(c.source, "customer_still");
      assert.equal(c.area, CHECKLIST[0].area);
      assert.equal(c.angle, CHECKLIST[0].angle);
      assert.equal(c.width, sc.camera.width, "still width = the camera's full width");
      assert.equal(c.height, sc.camera.height, "still height = the camera's full height");
      assert.ok(
        c.width > agentVideo.width && c.height > agentVideo.height,
        `the still (${c.width}x${c.height}) is larger than what the agent receives (${agentVideo.width}x${agentVideo.height})`,
      );
      const img = await sc.server.bytes(c.image_url);
      sc.saveImage("stored-capture-1", img.body, c.mime);
      assert.equal(img.body.length, c.bytes);
      const d = await assertImageShowsCamera(sc.browser, img.body, c.mime);
      assert.equal(d.width, c.width);
      assert.equal(d.height, c.height);
    });

    await sc.step(t, "the checklist advances on both pages (slot 1 done)", async () => {
      const s = await api("GET", `/sessions/${session.id}`);
      assert.equal(s.checklist[0].status, "done", `REST checklist: ${JSON.stringify(s.checklist)}`);
      t.diagnostic(`checklist before: ${JSON.stringify(checklistBefore)}`);
      await waitChecklistDone(agent, 1);
      await waitChecklistDone(customer, 1);
    });

    await sc.step(t, "the customer page is reloaded mid-call: the call and the lists come back", async () => {
      const trackBefore = await remoteTrackId(agent);
      await customer.page.reload({ waitUntil: "load" });
      await startCameraIfAsked(customer);
      await waitConnState(customer, "open");
      await waitVideoPlaying(customer, "local-video", { timeout: 20_000 });
      await waitFor(
        async () => {
          const id = await remoteTrackId(agent);
          if (!id || id === trackBefore) return false;
          const f = await videoFrames(agent.page, "remote-video");
          return f.width > 0 && (f.presented >= 2 || f.decoded >= 2);
        },
        { timeout: 45_000, message: "the agent's remote-video to play the customer's new stream after the reload" },
      );
      await assertVideoShowsCamera(agent, "remote-video");
      await waitCaptureItems(customer, 1, 10_000);
      await waitChecklistDone(customer, 1, 10_000);
      assert.equal(await captureCount(agent), 1, "the agent still lists one capture");
      await sc.snap("after-customer-reload");
    });

    await sc.step(t, "after the customer's reload, the customer sees the guide the agent's console shows", () => guideConsistent(t, agent, customer), {
      soft: true,
    });

    await sc.step(t, "the server is restarted mid-call: both pages reconnect by themselves", async () => {
      // The guide on both screens first (drawn again if the reload lost it on the phone), so that
      // the next step checks the restart alone.
      if (!(await guideConsistent(t, agent, customer, 1000).then(() => true, () => false))) {
        await drawBox(agent, [0.3, 0.3], [0.7, 0.75]);
        await guideConsistent(t, agent, customer).catch((e) => t.diagnostic(`guide not restored before the restart: ${e.message}`));
      }
      await sc.server.stop();
      const downStates = {};
      await waitFor(
        async () => {
          downStates.agent = await connState(agent);
          downStates.customer = await connState(customer);
          return downStates.agent !== "open" && downStates.customer !== "open";
        },
        { timeout: 10_000, message: "both pages to show that the connection is down" },
      ).catch((e) => {
        throw new Error(`${e.message}: ${JSON.stringify(downStates)}`);
      });
      t.diagnostic(`while the server is down: ${JSON.stringify(downStates)}`);
      await sleep(1500);
      await sc.snap("server-down");
      await sc.server.start();
      await waitConnState(agent, "open", { timeout: 30_000 });
      await waitConnState(customer, "open", { timeout: 30_000 });
      await waitVideoPlaying(agent, "remote-video", { timeout: 30_000 });
      await assertVideoShowsCamera(agent, "remote-video");
      await sc.snap("after-server-restart");
    });

    await sc.step(t, "after the server restart, the customer still sees the guide the agent's console shows", () => guideConsistent(t, agent, customer), {
      soft: true,
    });

    await sc.step(t, "after the restart a second capture works and fills slot 2", async () => {
      await pick(agent, "area-select", CHECKLIST[1].area);
      await pick(agent, "angle-select", CHECKLIST[1].angle);
      await agent.page.getByTestId("capture-button").first().click();
      await waitCaptureItems(agent, 2, 20_000);
      await waitCaptureItems(customer, 2, 20_000);
      const items = await captures();
      assert.equal(items.length, 2);
      assert.equal(items[1].source, "customer_still");
      assert.equal(items[1].width, sc.camera.width);
      const s = await api("GET", `/sessions/${session.id}`);
      assert.deepEqual(s.checklist.map((x) => x.status), ["done", "done"]);
      await waitChecklistDone(agent, 2);
      await waitChecklistDone(customer, 2);
      await sc.snap("second-capture");
    });

    await sc.step(t, "the agent ends the session: both pages say it has ended", async () => {
      const btn = endButton(agent);
      await btn.waitFor({ state: "visible", timeout: 5_000 });
      await btn.click();
      await sleep(500);
      await sc.snap("end-confirm", agent);
      const how = await confirmInPageDialog(agent);
      t.diagnostic(`end confirmed by: ${how}`);
      await waitConnState(agent, "closed", { timeout: 15_000 });
      await waitConnState(customer, "closed", { timeout: 15_000 });
      for (const role of [agent, customer]) {
        await waitFor(
          () => role.page.getByText(/ended|已结束/i).filter({ visible: true }).count(),
          { timeout: 10_000, message: `${role.name}'s page to show a visible 'session ended' message` },
        );
      }
      const s = await api("GET", `/sessions/${session.id}`);
      assert.equal(s.status, "closed");
      t.diagnostic(`agent dialogs: ${JSON.stringify(agent.dialogs)}`);
      await sc.snap("ended");
    });

    for (const role of [agent, customer].filter(Boolean)) {
      if (role.pageErrors.length) t.diagnostic(`${role.name} uncaught errors: ${role.pageErrors.join(" | ")}`);
      if (role.cspViolations.length) t.diagnostic(`${role.name} CSP violations: ${JSON.stringify(role.cspViolations)}`);
    }
    await t.test("no uncaught exceptions and no CSP violations on either page", () => {
      for (const role of [agent, customer].filter(Boolean)) {
        assert.deepEqual(role.pageErrors, [], `${role.name}: uncaught exceptions`);
        assert.deepEqual(role.cspViolations, [], `${role.name}: CSP violations`);
      }
    });
  } finally {
    await sc.dispose();
  }
});
