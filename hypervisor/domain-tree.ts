/**
 * A libvirt domain XML as a plain tree, parsed by fast-xml-parser (element order kept) with entity references
 * decoded here, once, so every value the restore policy looks at is the value libvirt would see. Serialized back
 * canonically: single-quoted attributes, no comments, no CDATA, no namespace declarations, no whitespace.
 */
import { XMLParser, XMLValidator } from 'fast-xml-parser';

/** An element: name (with its prefix, if any), attribute values (decoded), children (elements and text). */
export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: (XmlElement | string)[];
}

/** A stored definition that cannot be read as a libvirt domain at all (not strippable). */
export class DomainXmlError extends Error {
  override readonly name = 'DomainXmlError';
}

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '',
  allowBooleanAttributes: false,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  // Entities are decoded below (one pass, the five XML ones and character references only).
  processEntities: false,
  htmlEntities: false,
  cdataPropName: '#cdata',
  ignoreDeclaration: true,
  ignorePiTags: true,
  // A disk's backing chain is one nested <backingStore> per layer: the parser's default cap of 100 nested tags
  // would refuse a VM with a long chain (QEMU keeps a file open per layer: ~1000 is already far out). Still bounded:
  // the tree is built and walked recursively, and a stack overflow must not stand in for a clear refusal.
  maxNestedTags: 2_000,
});

const ENTITY = /&(#x[0-9A-Fa-f]+|#[0-9]+|[A-Za-z][\w.-]*);?/g;
const NAMED: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/**
 * Decodes the five XML entities and character references in one pass (so `&amp;#47;` stays `&#47;`).
 * @throws DomainXmlError for any other entity, a bad character reference or NUL
 */
export function decodeXmlText(raw: string): string {
  const out = raw.replace(ENTITY, (m: string, ref: string) => {
    if (!m.endsWith(';')) throw new DomainXmlError(`malformed entity reference ${JSON.stringify(m)}`);
    if (ref.startsWith('#')) {
      const code = ref[1] === 'x' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
      if (!Number.isFinite(code) || code <= 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff))
        throw new DomainXmlError(`bad character reference ${m}`);
      return String.fromCodePoint(code);
    }
    const named = NAMED[ref];
    if (named === undefined) throw new DomainXmlError(`undeclared entity ${m}`);
    return named;
  });
  if (out.includes('\0')) throw new DomainXmlError('NUL character in the definition');
  return out;
}

type Raw = Record<string, unknown>;

function toElement(node: Raw): XmlElement | string | undefined {
  if ('#text' in node) return decodeXmlText(String(node['#text']));
  if ('#cdata' in node) {
    // CDATA is literal text: its content is not decoded again.
    const parts = node['#cdata'] as Raw[];
    return parts.map((p) => String(p['#text'] ?? '')).join('');
  }
  const name = Object.keys(node).find((k) => k !== ':@');
  if (name === undefined) return undefined;
  const attrs: Record<string, string> = {};
  for (const [k, v] of Object.entries((node[':@'] as Raw | undefined) ?? {})) attrs[k] = decodeXmlText(String(v));
  const children: (XmlElement | string)[] = [];
  for (const c of (node[name] as Raw[] | undefined) ?? []) {
    const e = toElement(c);
    if (e === undefined) continue;
    // Adjacent text (text, CDATA) is one value.
    const last = children[children.length - 1];
    if (typeof e === 'string' && typeof last === 'string') children[children.length - 1] = last + e;
    else children.push(e);
  }
  return { name, attrs, children };
}

/**
 * Parses a domain XML. DOCTYPE and entity declarations are refused outright (no internal subset is ever
 * expanded); comments and processing instructions are dropped; CDATA becomes text.
 * @throws DomainXmlError when it is not well-formed, declares a DOCTYPE/entities, or its root is not `<domain>`
 */
export function parseDomainTree(xml: string): XmlElement {
  if (/<!DOCTYPE|<!ENTITY|<!ELEMENT|<!ATTLIST|<!NOTATION/i.test(xml))
    throw new DomainXmlError('the stored definition declares a DOCTYPE or entities: refused');
  const valid = XMLValidator.validate(xml);
  if (valid !== true) throw new DomainXmlError(`the stored definition is not well-formed XML: ${valid.err.msg}`);
  let raw: Raw[];
  try {
    raw = parser.parse(xml) as Raw[];
  } catch (err) {
    // e.g. more nested elements than maxNestedTags: bad input like any other malformed definition.
    throw new DomainXmlError(`the stored definition cannot be read: ${(err as Error).message}`);
  }
  const top = raw.map(toElement).filter((e): e is XmlElement => typeof e === 'object');
  if (top.length !== 1 || top[0].name !== 'domain')
    throw new DomainXmlError('the stored definition is not one <domain> element');
  return top[0];
}

const escText = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const escAttr = (s: string) => escText(s).replace(/'/g, '&apos;').replace(/"/g, '&quot;');

/** Canonical XML of a tree (single-quoted attributes, escaped values, no whitespace added). */
export function serializeDomainTree(e: XmlElement): string {
  const attrs = Object.entries(e.attrs)
    .map(([k, v]) => ` ${k}='${escAttr(v)}'`)
    .join('');
  if (e.children.length === 0) return `<${e.name}${attrs}/>`;
  const inner = e.children.map((c) => (typeof c === 'string' ? escText(c) : serializeDomainTree(c))).join('');
  return `<${e.name}${attrs}>${inner}</${e.name}>`;
}

/** The element children of `e`. */
export const elements = (e: XmlElement): XmlElement[] =>
  e.children.filter((c): c is XmlElement => typeof c !== 'string');

/** The first child element named `name`. */
export const child = (e: XmlElement, name: string): XmlElement | undefined => elements(e).find((c) => c.name === name);

/** The text content of `e` (its direct text children, joined). */
export const textOf = (e: XmlElement): string => e.children.filter((c): c is string => typeof c === 'string').join('');
