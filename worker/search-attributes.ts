import { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { SEARCH_ATTRIBUTES } from '../common/search-attributes';

const TYPES: Record<string, temporal.api.enums.v1.IndexedValueType> = {
  Keyword: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
  Int: temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_INT,
};

/**
 * Makes sure groupsnap's search attributes exist in `namespace`, adding the missing ones. Where the server does
 * not allow that (e.g. Temporal Cloud, or no operator permission), the error says exactly what to run.
 */
export async function ensureSearchAttributes(
  connection: Pick<Connection, 'operatorService'>,
  namespace: string,
): Promise<string[]> {
  const existing = await connection.operatorService.listSearchAttributes({ namespace });
  const have = new Set([
    ...Object.keys(existing.customAttributes ?? {}),
    ...Object.keys(existing.systemAttributes ?? {}),
  ]);
  const missing = Object.entries(SEARCH_ATTRIBUTES).filter(([name]) => !have.has(name));
  if (missing.length === 0) return [];
  try {
    await connection.operatorService.addSearchAttributes({
      namespace,
      searchAttributes: Object.fromEntries(missing.map(([name, type]) => [name, TYPES[type]])),
    });
  } catch (err) {
    const commands = missing
      .map(
        ([name, type]) =>
          `  temporal operator search-attribute create --namespace ${namespace} --name ${name} --type ${type}`,
      )
      .join('\n');
    throw new Error(
      `groupsnap's search attributes are missing in namespace ${namespace} and could not be added ` +
        `(${(err as Error).message}). Ask an operator to run:\n${commands}`,
    );
  }
  return missing.map(([name]) => name);
}
