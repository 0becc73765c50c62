import type { Hypervisor } from './hypervisor';
import { ImageNotFoundError } from './images';

/** `file` and its backing files, `file` first, as far as they exist (read from the image headers). */
export async function imageChain(hypervisor: Hypervisor, file: string | undefined): Promise<string[]> {
  const chain: string[] = [];
  for (let f = file; f !== undefined && chain.length < 1000;) {
    try {
      const info = await hypervisor.imageInfo(f);
      chain.push(f);
      f = info.backing;
    } catch (err) {
      if (err instanceof ImageNotFoundError) break;
      throw err;
    }
  }
  return chain;
}
