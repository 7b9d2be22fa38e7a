// Schemas: every type and version (GET /v1/schemas), one schema rendered as a table of its
// fields (GET /v1/schemas/{type}/{version}), the type's compatibility mode when the registry
// reports one (GET /v1/schemas/{type}), and a box that validates an event the way
// POST /v1/events would (POST /v1/schemas/{type}/{version}/validate).

import { call } from "../api.js";
import { fill, h, heading, jsonBlock, problemView } from "../ui.js";

const MAX_DEPTH = 6;
const CONSTRAINTS = [
  "format", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf",
  "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
  "minProperties", "maxProperties", "default",
];

function schemaHref(type, version) {
  return `#/schemas/${encodeURIComponent(type)}/${encodeURIComponent(version)}`;
}

/** A local `$ref` (`#/$defs/x`, `#/definitions/x`) resolved in `root`, else the schema itself. */
function resolve(schema, root) {
  if (!schema || typeof schema !== "object" || typeof schema.$ref !== "string") return schema;
  if (!schema.$ref.startsWith("#/")) return schema;
  let target = root;
  for (const part of schema.$ref.slice(2).split("/")) {
    target = target && target[part.replace(/~1/g, "/").replace(/~0/g, "~")];
  }
  return target && typeof target === "object" ? { ...target, ...schema, $ref: undefined } : schema;
}

function typeOf(s) {
  if (!s || typeof s !== "object") return s === false ? "nothing" : "anything";
  if ("const" in s) return `exactly ${JSON.stringify(s.const)}`;
  if (Array.isArray(s.enum)) return `one of ${s.enum.map((v) => JSON.stringify(v)).join(", ")}`;
  if (Array.isArray(s.type)) return s.type.join(" or ");
  if (s.type) return s.type;
  for (const k of ["oneOf", "anyOf", "allOf"]) {
    if (Array.isArray(s[k])) return `${k} of ${s[k].length} schemas`;
  }
  if (s.properties) return "object";
  return "anything";
}

function constraints(s) {
  if (!s || typeof s !== "object") return "";
  const out = CONSTRAINTS.filter((k) => k in s).map((k) => `${k}: ${JSON.stringify(s[k])}`);
  if (s.additionalProperties === false || s.unevaluatedProperties === false) out.push("no other fields");
  return out.join("; ");
}

/** Table rows for the fields of `schema`, nested fields indented under their parent. */
function fieldRows(schema, root, path, depth, rows) {
  const s = resolve(schema, root);
  if (!s || typeof s !== "object" || depth > MAX_DEPTH) return rows;
  const required = new Set(Array.isArray(s.required) ? s.required : []);
  for (const [name, sub0] of Object.entries(s.properties || {})) {
    const sub = resolve(sub0, root);
    const p = path ? `${path}.${name}` : name;
    rows.push(h("tr", {},
      h("th", { scope: "row", class: "mono" }, h("span", { class: `indent-${Math.min(depth, 5)}` }, p)),
      h("td", {}, typeOf(sub)),
      h("td", {}, required.has(name) ? "required" : "optional"),
      h("td", { class: "small" }, constraints(sub)),
      h("td", { class: "small" }, (sub && (sub.description || sub.title)) || "")));
    if (sub && typeof sub === "object") {
      if (sub.properties) fieldRows(sub, root, p, depth + 1, rows);
      const items = resolve(sub.items, root);
      if (items && typeof items === "object" && items.properties) fieldRows(items, root, `${p}[]`, depth + 1, rows);
    }
  }
  return rows;
}

/** A starting point for the validation box: the schema's first example, or its required fields. */
function skeleton(schema, root, depth = 0) {
  const s = resolve(schema, root);
  if (!s || typeof s !== "object" || depth > MAX_DEPTH) return null;
  if (Array.isArray(s.examples) && s.examples.length) return s.examples[0];
  if ("const" in s) return s.const;
  if (Array.isArray(s.enum) && s.enum.length) return s.enum[0];
  if ("default" in s) return s.default;
  const type = Array.isArray(s.type) ? s.type[0] : s.type || (s.properties ? "object" : null);
  switch (type) {
    case "object": {
      const out = {};
      for (const name of Array.isArray(s.required) ? s.required : []) {
        out[name] = skeleton((s.properties || {})[name], root, depth + 1);
      }
      return out;
    }
    case "array": return [];
    case "string": return s.format === "date-time" ? new Date().toISOString() : "";
    case "integer":
    case "number": return typeof s.minimum === "number" ? s.minimum : 0;
    case "boolean": return false;
    default: return null;
  }
}

function typeList(schemas, current) {
  return h("nav", { class: "panel schema-list", "aria-label": "Schemas" },
    h("h2", {}, "Types"),
    schemas.length ? h("ul", {}, schemas.map((s) => h("li", {},
      h("span", { class: "mono" }, s.type),
      h("ul", { class: "versions" }, s.versions.map((v) => h("li", {},
        h("a", {
          href: schemaHref(s.type, v),
          "aria-current": current && current.type === s.type && current.version === v ? "page" : false,
        }, v))))))) : h("p", {}, "No schema is loaded."));
}

function validator(type, version, schema) {
  const start = { data: skeleton(schema, schema) ?? {} };
  const area = h("textarea", {
    id: "validate-input", class: "mono", rows: "12", spellcheck: "false",
    "aria-describedby": "validate-hint",
  });
  area.value = JSON.stringify(start, null, 2);
  const result = h("div", { id: "validate-result", "aria-live": "polite", class: "validate-result" });
  const form = h("form", {
    class: "panel validate",
    onsubmit: async (e) => {
      e.preventDefault();
      result.setAttribute("aria-busy", "true");
      const res = await call(`/v1/schemas/${encodeURIComponent(type)}/${encodeURIComponent(version)}/validate`, {
        method: "POST", json: area.value,
      });
      result.setAttribute("aria-busy", "false");
      if (res.ok) {
        fill(result, h("p", { class: "ok", role: "status" }, `Valid: this event's data matches ${type} ${version}.`));
      } else {
        fill(result, problemView(res.problem));
      }
    },
  },
  h("h2", {}, "Validate an event"),
  h("label", { for: "validate-input" }, "Event (native envelope)"),
  h("small", { id: "validate-hint", class: "hint" },
    "Paste an event, or just {\"data\": …}; type and version may be left out. postbox answers as POST /v1/events would, and stores nothing."),
  area,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Validate")),
  result);
  return form;
}

async function detail(box, type, version, list) {
  const [doc, meta] = await Promise.all([
    call(`/v1/schemas/${encodeURIComponent(type)}/${encodeURIComponent(version)}`),
    call(`/v1/schemas/${encodeURIComponent(type)}`),
  ]);
  if (!doc.ok) {
    fill(box, problemView(doc.problem));
    return;
  }
  const schema = doc.body;
  const entry = list.find((s) => s.type === type);
  // The registry (GET /v1/schemas/{type}) reports the compatibility mode and each version's
  // state; a postbox without it answers 404 and the page says so.
  const m = meta.ok && meta.body && typeof meta.body === "object" ? meta.body : null;
  const mode = m && (m.compatibility || m.mode);
  const mine = m && Array.isArray(m.versions)
    ? m.versions.find((v) => v && (v.version === version || v === version)) : null;
  const rows = fieldRows(schema, schema, "", 0, []);
  fill(box,
    h("section", { class: "panel", "aria-labelledby": "h-schema" },
      h("h2", { id: "h-schema" }, `${type} ${version}`),
      schema.title || schema.description ? h("p", {}, schema.title || "", schema.title && schema.description ? " — " : "", schema.description || "") : null,
      h("dl", { class: "facts" },
        h("dt", {}, "Versions"), h("dd", {}, entry ? entry.versions.join(", ") : version),
        h("dt", {}, "Compatibility mode"),
        h("dd", { dataset: { field: "compatibility" } }, mode || "not reported by this postbox"),
        mine && typeof mine === "object" && mine.state ? [h("dt", {}, "State"), h("dd", {}, String(mine.state))] : null,
        mine && typeof mine === "object" && mine.origin ? [h("dt", {}, "Origin"), h("dd", {}, String(mine.origin))] : null,
        h("dt", {}, "JSON Schema dialect"), h("dd", { class: "mono" }, schema.$schema || "default (2020-12)"),
        h("dt", {}, "Schema URL (CloudEvents dataschema)"),
        h("dd", {}, h("a", { href: `../v1/schemas/${encodeURIComponent(type)}/${encodeURIComponent(version)}`, class: "mono" },
          `/v1/schemas/${type}/${version}`))),
      h("h3", {}, "Fields of data"),
      rows.length ? h("div", { class: "table-wrap", tabindex: "0", "aria-label": "Fields" },
        h("table", { class: "fields-table" },
          h("thead", {}, h("tr", {}, ["Field", "Type", "Presence", "Constraints", "Description"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, rows)))
        : h("p", {}, `data is ${typeOf(schema)}${constraints(schema) ? ` (${constraints(schema)})` : ""}.`),
      h("details", {}, h("summary", {}, "The JSON Schema as written"), jsonBlock(schema, "JSON Schema"))),
    validator(type, version, schema));
}

export function render(main, route) {
  const [, type, version] = route.parts;
  const listBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const detailBox = h("div", { class: "schema-detail" });
  fill(main, heading("Schemas"), h("div", { class: "schemas-layout" }, listBox, detailBox));
  (async () => {
    const res = await call("/v1/schemas");
    if (!res.ok) {
      fill(listBox, problemView(res.problem));
      return;
    }
    const list = res.body.schemas;
    fill(listBox, typeList(list, type && version ? { type, version } : null));
    if (type && version) {
      detail(detailBox, type, version, list);
    } else if (list.length) {
      const first = list[0];
      fill(detailBox, h("p", { class: "panel" }, "Pick a version on the left, e.g. ",
        h("a", { href: schemaHref(first.type, first.versions[first.versions.length - 1]) },
          `${first.type} ${first.versions[first.versions.length - 1]}`), "."));
    }
  })();
}
