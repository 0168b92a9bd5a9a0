// Languages (zh-CN and English) and the translated labels of the contract's vocabulary.
// The id lists mirror src/vocabulary.rs (a unit test compares them).

export const LOCALES = Object.freeze(["zh-CN", "en"]);

/** The session's locale wins; else a browser language starting with "zh"; else English. */
export function pickLocale(sessionLocale, navigatorLanguages) {
  if (typeof sessionLocale === "string") {
    const s = sessionLocale.toLowerCase();
    if (s === "zh-cn" || s.startsWith("zh")) return "zh-CN";
    if (s === "en" || s.startsWith("en")) return "en";
  }
  const langs = typeof navigatorLanguages === "string" ? [navigatorLanguages] : navigatorLanguages || [];
  for (const lang of langs) {
    if (typeof lang === "string" && lang.toLowerCase().startsWith("zh")) return "zh-CN";
  }
  return "en";
}

/**
 * t(key, params) from {en: {...}, "zh-CN": {...}}: the locale's string, else the English one, else
 * the key; `{name}` is replaced by params.name (left as is when params has no such name).
 */
export function makeT(dict, locale) {
  const own = (dict && dict[locale]) || {};
  const en = (dict && dict.en) || {};
  return (key, params) => {
    const s = Object.hasOwn(own, key) ? own[key] : Object.hasOwn(en, key) ? en[key] : key;
    return interpolate(String(s), params);
  };
}

function interpolate(s, params) {
  if (!params) return s;
  return s.replace(/\{(\w+)\}/g, (m, name) => (Object.hasOwn(params, name) ? String(params[name]) : m));
}

// [id, English, Simplified Chinese]. Left and right are the vehicle's own sides (as seen from the
// driver's seat), so they read the same for the agent and for the customer facing the car.
const AREA_LABELS = [
  ["front_bumper", "Front bumper", "前保险杠"],
  ["front_grille", "Front grille", "前格栅"],
  ["hood", "Hood", "引擎盖"],
  ["headlight_left", "Left headlight", "左前大灯"],
  ["headlight_right", "Right headlight", "右前大灯"],
  ["fog_light_front_left", "Front left fog light", "左前雾灯"],
  ["fog_light_front_right", "Front right fog light", "右前雾灯"],
  ["front_license_plate", "Front license plate", "前车牌"],
  ["windshield", "Windshield", "前挡风玻璃"],
  ["fender_front_left", "Front left fender", "左前翼子板"],
  ["fender_front_right", "Front right fender", "右前翼子板"],
  ["mirror_left", "Left side mirror", "左后视镜"],
  ["mirror_right", "Right side mirror", "右后视镜"],
  ["door_front_left", "Front left door", "左前门"],
  ["door_front_right", "Front right door", "右前门"],
  ["door_rear_left", "Rear left door", "左后门"],
  ["door_rear_right", "Rear right door", "右后门"],
  ["window_front_left", "Front left window", "左前车窗"],
  ["window_front_right", "Front right window", "右前车窗"],
  ["window_rear_left", "Rear left window", "左后车窗"],
  ["window_rear_right", "Rear right window", "右后车窗"],
  ["rocker_panel_left", "Left rocker panel", "左侧裙边"],
  ["rocker_panel_right", "Right rocker panel", "右侧裙边"],
  ["pillar_left", "Left pillar", "左侧车柱"],
  ["pillar_right", "Right pillar", "右侧车柱"],
  ["quarter_panel_rear_left", "Rear left quarter panel", "左后翼子板"],
  ["quarter_panel_rear_right", "Rear right quarter panel", "右后翼子板"],
  ["wheel_front_left", "Front left wheel", "左前轮"],
  ["wheel_front_right", "Front right wheel", "右前轮"],
  ["wheel_rear_left", "Rear left wheel", "左后轮"],
  ["wheel_rear_right", "Rear right wheel", "右后轮"],
  ["fuel_door", "Fuel door", "加油口盖"],
  ["rear_bumper", "Rear bumper", "后保险杠"],
  ["trunk_lid_tailgate", "Trunk lid / tailgate", "后备箱盖/尾门"],
  ["taillight_left", "Left taillight", "左尾灯"],
  ["taillight_right", "Right taillight", "右尾灯"],
  ["rear_windshield", "Rear windshield", "后挡风玻璃"],
  ["rear_license_plate", "Rear license plate", "后车牌"],
  ["roof", "Roof", "车顶"],
  ["undercarriage", "Undercarriage", "底盘"],
  ["other_exterior", "Other exterior part", "其他外观部位"],
  ["dashboard", "Dashboard", "仪表台"],
  ["odometer", "Odometer", "里程表"],
  ["vin", "VIN", "车架号（VIN）"],
  ["front_seats", "Front seats", "前排座椅"],
  ["rear_seats", "Rear seats", "后排座椅"],
  ["trunk_interior", "Trunk interior", "后备箱内部"],
  ["engine_bay", "Engine bay", "发动机舱"],
  ["registration_document", "Registration document", "行驶证"],
  ["scene_overview", "Accident scene overview", "事故现场全景"],
  ["overview", "Vehicle overview", "车辆全景"],
];

const ANGLE_LABELS = [
  ["front", "Front", "正前方"],
  ["front_left_45", "Front left 45°", "左前方45°"],
  ["left", "Left side", "左侧"],
  ["rear_left_45", "Rear left 45°", "左后方45°"],
  ["rear", "Rear", "正后方"],
  ["rear_right_45", "Rear right 45°", "右后方45°"],
  ["right", "Right side", "右侧"],
  ["front_right_45", "Front right 45°", "右前方45°"],
  ["close_up", "Close-up", "近距离特写"],
  ["detail_oblique", "Oblique detail", "斜角细节"],
  ["top_down", "Top-down", "俯拍"],
  ["interior", "Interior", "车内"],
  ["document", "Document", "证件"],
];

// Hints are instructions to the person holding the phone: left/right/up/down are directions to
// move the camera, not sides of the vehicle.
const HINT_LABELS = [
  ["closer", "Move closer", "请靠近一点"],
  ["farther", "Step back", "请退后一点"],
  ["left", "Move left", "请向左移"],
  ["right", "Move right", "请向右移"],
  ["up", "Move up", "请向上移"],
  ["down", "Move down", "请向下移"],
  ["hold_steady", "Hold steady", "请保持手机稳定"],
  ["more_light", "More light, please", "光线太暗，请补光"],
  ["less_glare", "Avoid glare", "请避开反光"],
];

const WARNING_LABELS = [
  ["blurry", "Blurry", "画面模糊"],
  ["too_dark", "Too dark", "光线过暗"],
  ["too_bright", "Too bright", "光线过亮"],
];

const SLOT_STATUS_LABELS = [
  ["pending", "To do", "待拍摄"],
  ["done", "Done", "已完成"],
];

const TABLES = {
  area: AREA_LABELS,
  angle: ANGLE_LABELS,
  hint: HINT_LABELS,
  warning: WARNING_LABELS,
  slot_status: SLOT_STATUS_LABELS,
};

const LABELS = {};
for (const [kind, rows] of Object.entries(TABLES)) {
  LABELS[kind] = new Map(rows.map(([id, en, zh]) => [id, { en, "zh-CN": zh }]));
}

/** The vocabulary ids, in the contract's order. */
export const AREAS = Object.freeze(AREA_LABELS.map((r) => r[0]));
export const ANGLES = Object.freeze(ANGLE_LABELS.map((r) => r[0]));
export const HINTS = Object.freeze(HINT_LABELS.map((r) => r[0]));
export const WARNINGS = Object.freeze(WARNING_LABELS.map((r) => r[0]));
export const SLOT_STATUSES = Object.freeze(SLOT_STATUS_LABELS.map((r) => r[0]));

/**
 * The label of a vocabulary id; kind is "area" | "angle" | "hint" | "warning" | "slot_status".
 * An unknown id (a newer server) comes back as is, so nothing shows blank.
 */
export function label(kind, id, locale) {
  const entry = LABELS[kind]?.get(id);
  if (!entry) return String(id);
  return entry[locale] ?? entry.en;
}

/**
 * Fills [data-i18n] text and the [data-i18n-placeholder], [data-i18n-title] and
 * [data-i18n-aria-label] attributes under root (root itself included) with t(key).
 */
export function applyTranslations(root, t) {
  const targets = [
    ["data-i18n", null],
    ["data-i18n-placeholder", "placeholder"],
    ["data-i18n-title", "title"],
    ["data-i18n-aria-label", "aria-label"],
  ];
  for (const [attr, into] of targets) {
    const els = [...root.querySelectorAll(`[${attr}]`)];
    if (typeof root.hasAttribute === "function" && root.hasAttribute(attr)) els.unshift(root);
    for (const el of els) {
      const text = t(el.getAttribute(attr));
      if (into) el.setAttribute(into, text);
      else el.textContent = text;
    }
  }
}
