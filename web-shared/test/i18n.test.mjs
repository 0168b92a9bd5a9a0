import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  pickLocale, makeT, label, applyTranslations, AREAS, ANGLES, HINTS, WARNINGS, SLOT_STATUSES, LOCALES,
} from "../i18n.js";

// The Rust source is the source of truth for the vocabulary: read the lists out of it.
const repoFile = (p) => readFileSync(new URL(`../../${p}`, import.meta.url), "utf8");
function rustList(src, name) {
  const m = src.match(new RegExp(`pub const ${name}: &\\[&str\\] = &\\[([\\s\\S]*?)\\];`));
  assert.ok(m, `${name} found in src/vocabulary.rs`);
  return [...m[1].matchAll(/"([a-z0-9_]+)"/g)].map((x) => x[1]);
}
const vocab = repoFile("src/vocabulary.rs");
const RUST = {
  area: rustList(vocab, "AREAS"),
  angle: rustList(vocab, "ANGLES"),
  hint: rustList(vocab, "HINTS"),
  warning: [...repoFile("src/capture/quality.rs").matchAll(/warnings\.push\("([a-z_]+)"\)/g)].map((x) => x[1]),
};

test("the id lists match src/vocabulary.rs, in order", () => {
  assert.equal(RUST.area.length, 51);
  assert.equal(RUST.angle.length, 13);
  assert.equal(RUST.hint.length, 9);
  assert.deepEqual([...AREAS], RUST.area);
  assert.deepEqual([...ANGLES], RUST.angle);
  assert.deepEqual([...HINTS], RUST.hint);
  assert.deepEqual([...WARNINGS].sort(), [...new Set(RUST.warning)].sort());
  assert.deepEqual([...SLOT_STATUSES], ["pending", "done"]);
  assert.deepEqual([...LOCALES].sort(), ["en", "zh-CN"]);
});

test("every vocabulary id has a non-empty, distinct label in en and zh-CN", () => {
  const kinds = { area: AREAS, angle: ANGLES, hint: HINTS, warning: WARNINGS, slot_status: SLOT_STATUSES };
  for (const [kind, ids] of Object.entries(kinds)) {
    for (const locale of ["en", "zh-CN"]) {
      const labels = ids.map((id) => label(kind, id, locale));
      labels.forEach((l, i) => {
        assert.equal(typeof l, "string");
        assert.ok(l.trim().length > 0, `${kind} ${ids[i]} ${locale}`);
        assert.notEqual(l, ids[i], `${kind} ${ids[i]} ${locale} is translated, not the id`);
      });
      const dup = labels.filter((l, i) => labels.indexOf(l) !== i);
      assert.deepEqual(dup, [], `${kind} labels in ${locale} are distinct`);
    }
    for (const id of ids) {
      const zh = label(kind, id, "zh-CN");
      assert.match(zh, /[\u4e00-\u9fff]/, `${kind} ${id} zh-CN label is Chinese: ${zh}`);
      assert.doesNotMatch(label(kind, id, "en"), /[\u4e00-\u9fff]/);
    }
  }
});

test("left and right are the vehicle's sides in area labels", () => {
  assert.equal(label("area", "door_front_left", "en"), "Front left door");
  assert.equal(label("area", "door_front_left", "zh-CN"), "左前门");
  assert.equal(label("area", "front_bumper", "en"), "Front bumper");
  assert.equal(label("area", "front_bumper", "zh-CN"), "前保险杠");
  for (const id of AREAS) {
    const en = label("area", id, "en");
    const zh = label("area", id, "zh-CN");
    if (id.endsWith("_left")) {
      assert.match(en, /\bleft\b/i, id);
      assert.match(zh, /左/, id);
      assert.doesNotMatch(zh, /右/, id);
    }
    if (id.endsWith("_right")) {
      assert.match(en, /\bright\b/i, id);
      assert.match(zh, /右/, id);
      assert.doesNotMatch(zh, /左/, id);
    }
  }
});

test("label falls back to English for an unknown locale and to the id for an unknown id", () => {
  assert.equal(label("angle", "close_up", "fr"), label("angle", "close_up", "en"));
  assert.equal(label("area", "spoiler", "zh-CN"), "spoiler");
  assert.equal(label("nope", "hood", "en"), "hood");
  assert.equal(label("warning", "too_dark", "zh-CN"), "光线过暗");
  assert.equal(label("slot_status", "done", "en"), "Done");
});

test("pickLocale: the session's locale wins, else a zh browser language, else en", () => {
  assert.equal(pickLocale("zh-CN", ["en-US"]), "zh-CN");
  assert.equal(pickLocale("en", ["zh-CN", "zh"]), "en");
  assert.equal(pickLocale(null, ["zh-CN"]), "zh-CN");
  assert.equal(pickLocale(undefined, ["en-GB", "zh-TW"]), "zh-CN");
  assert.equal(pickLocale(undefined, ["ZH-hk"]), "zh-CN");
  assert.equal(pickLocale(null, ["en-US", "fr"]), "en");
  assert.equal(pickLocale(null, ["fr-FR"]), "en");
  assert.equal(pickLocale(null, []), "en");
  assert.equal(pickLocale(null, undefined), "en");
  assert.equal(pickLocale(null, "zh"), "zh-CN", "a single navigator.language string");
  assert.equal(pickLocale("de", ["zh-CN"]), "zh-CN", "an unsupported session locale is ignored");
});

test("makeT interpolates and falls back to en, then to the key", () => {
  const dict = {
    en: { hello: "Hi {name}", progress: "{done} / {total}", only_en: "English only" },
    "zh-CN": { hello: "你好 {name}", progress: "{done} / {total} 已完成" },
  };
  const zh = makeT(dict, "zh-CN");
  const en = makeT(dict, "en");
  assert.equal(zh("hello", { name: "王" }), "你好 王");
  assert.equal(en("hello", { name: "Ann" }), "Hi Ann");
  assert.equal(zh("progress", { done: 3, total: 9 }), "3 / 9 已完成");
  assert.equal(zh("only_en"), "English only");
  assert.equal(zh("missing_key"), "missing_key");
  assert.equal(en("hello"), "Hi {name}", "no params: left as is");
  assert.equal(en("hello", { other: 1 }), "Hi {name}", "unknown placeholder kept");
  assert.equal(en("hello", { name: 0 }), "Hi 0");
  assert.equal(makeT(dict, "fr")("hello", { name: "x" }), "Hi x");
  assert.equal(en("toString"), "toString", "no prototype keys");
});

// A tiny DOM stand-in: elements with attributes, textContent and querySelectorAll("[attr]").
class El {
  constructor(attrs = {}, children = []) {
    this.attrs = { ...attrs };
    this.children = children;
    this.textContent = "orig";
  }
  getAttribute(n) {
    return Object.hasOwn(this.attrs, n) ? this.attrs[n] : null;
  }
  setAttribute(n, v) {
    this.attrs[n] = String(v);
  }
  hasAttribute(n) {
    return Object.hasOwn(this.attrs, n);
  }
  querySelectorAll(sel) {
    const m = sel.match(/^\[([\w-]+)\]$/);
    assert.ok(m, `simple attribute selector: ${sel}`);
    const out = [];
    const walk = (el) => {
      for (const c of el.children) {
        if (c.hasAttribute(m[1])) out.push(c);
        walk(c);
      }
    };
    walk(this);
    return out;
  }
}

test("applyTranslations fills text and the placeholder, title and aria-label attributes", () => {
  const t = makeT({ en: { a: "A", p: "Type here", ti: "Tip", ar: "Close" }, "zh-CN": { a: "甲", p: "在此输入", ti: "提示", ar: "关闭" } }, "zh-CN");
  const text = new El({ "data-i18n": "a" });
  const input = new El({ "data-i18n-placeholder": "p" });
  const both = new El({ "data-i18n-title": "ti", "data-i18n-aria-label": "ar" });
  const plain = new El({ id: "x" });
  const root = new El({}, [new El({}, [text, input]), both, plain]);
  applyTranslations(root, t);
  assert.equal(text.textContent, "甲");
  assert.equal(input.getAttribute("placeholder"), "在此输入");
  assert.equal(input.textContent, "orig", "placeholder-only elements keep their text");
  assert.equal(both.getAttribute("title"), "提示");
  assert.equal(both.getAttribute("aria-label"), "关闭");
  assert.equal(plain.textContent, "orig");
  assert.equal(plain.getAttribute("title"), null);

  const self = new El({ "data-i18n": "a" });
  applyTranslations(self, makeT({ en: { a: "A" } }, "en"));
  assert.equal(self.textContent, "A", "the root itself is translated too");
});
